"""``pack_xadd`` writes the same bytes redis-py would for the same XADD."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from mainspring.messaging._redis_streams import pack_xadd

_redis_py = Connection()


def _reference(key: bytes, fields: dict[bytes, bytes], trim: bytes | None) -> bytes:
    args: list[bytes] = [b"XADD", key]
    if trim is not None:
        args += [b"MAXLEN", b"~", trim]
    args.append(b"*")
    for name, value in fields.items():
        args += [name, value]
    return b"".join(_redis_py.pack_command(*args))


@given(
    key=st.binary(min_size=1, max_size=40),
    fields=st.dictionaries(
        st.binary(min_size=1, max_size=12), st.binary(max_size=300), min_size=1, max_size=4
    ),
    trim=st.one_of(st.none(), st.integers(min_value=1, max_value=10**9).map(lambda n: str(n).encode())),
)
def test_pack_xadd_matches_redis_py(key: bytes, fields: dict[bytes, bytes], trim: bytes | None) -> None:
    assert pack_xadd(key, fields, trim) == _reference(key, fields, trim)


def test_a_large_body_is_packed_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value, \r\n included
    assert pack_xadd(b"ms:{t}", {b"body": body}, None) == _reference(b"ms:{t}", {b"body": body}, None)
