"""The byte form of cache entries: every codec x compression round trips, and bad bytes are refused."""

from __future__ import annotations

import contextlib
import math
import pickle
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainspring.cache import CodecError, Entry, PickleCodec, Serializer
from mainspring.cache._codec import CODEC_IDS, COMPRESSION_IDS, is_plain_int
from mainspring.errors import ConfigError

KEY = "k" * 32
OTHER_KEY = "o" * 32

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
msgpack_values = st.recursive(
    json_scalars | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
pickle_values = st.recursive(
    json_scalars | st.binary(max_size=40) | st.complex_numbers(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
entries_meta = st.fixed_dictionaries(
    {
        "fresh_until": st.floats(min_value=0, max_value=4e9) | st.just(math.inf),
        "ttl": st.none() | st.floats(min_value=0.001, max_value=1e7),
        "stale_ttl": st.floats(min_value=0, max_value=1e6),
        "delta": st.floats(min_value=0, max_value=100),
        "tags": st.lists(
            st.tuples(st.text(min_size=1, max_size=30), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
            max_size=4,
        ).map(tuple),
    }
)
CODEC_VALUES = {"json": json_values, "msgpack": msgpack_values, "pickle": pickle_values}


def _serializer(codec: str, compression: Any, **kwargs: Any) -> Serializer:
    return Serializer(codec, compression=compression, compress_min_size=0, pickle_key=KEY, **kwargs)


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd"])
@pytest.mark.parametrize("codec", ["json", "msgpack", "pickle"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_codec_and_compression_round_trips(codec: str, compression: Any, data: st.DataObject) -> None:
    value = data.draw(CODEC_VALUES[codec])
    meta = data.draw(entries_meta)
    entry = Entry(value, **meta)
    writer = _serializer(codec, compression)
    encoded = writer.encode(entry)
    # Any reader decodes any entry: one configured with another codec and compression too.
    reader = Serializer("json", compression="none", pickle_key=KEY)
    for serializer in (writer, reader):
        decoded = serializer.decode(encoded)
        if is_plain_int(entry):
            assert decoded.value == value
            assert type(decoded.value) is int
        else:
            assert decoded == entry


@given(st.binary(min_size=1, max_size=3000))
def test_bytes_values_are_stored_as_they_are_whatever_the_codec(value: bytes) -> None:
    serializer = Serializer("json", compression="gzip", compress_min_size=100)
    decoded = serializer.decode(serializer.encode(Entry(value)))
    assert decoded.value == value
    assert type(decoded.value) is bytes


def test_the_header_byte_records_codec_and_compression() -> None:
    payload = {"text": "x" * 5000}
    for compression in ("gzip", "lz4", "zstd"):
        encoded = Serializer("msgpack", compression=compression, compress_min_size=100).encode(Entry(payload))
        assert encoded[0] == 0x80 | CODEC_IDS["msgpack"] << 3 | COMPRESSION_IDS[compression]
    small = Serializer("json", compression="zstd", compress_min_size=1000).encode(Entry({"a": 1}))
    assert small[0] == 0x80 | CODEC_IDS["json"] << 3, "below the threshold nothing is compressed"


def test_compression_is_skipped_when_it_does_not_shrink_the_payload() -> None:
    import os

    noise = os.urandom(4000)
    encoded = Serializer("json", compression="gzip", compress_min_size=10).encode(Entry(noise))
    assert encoded[0] & 0x07 == 0


def test_plain_ints_are_ascii_like_a_redis_counter() -> None:
    serializer = Serializer()
    assert serializer.encode(Entry(42)) == b"42"
    assert serializer.encode(Entry(-7, fresh_until=1e9)) == b"-7"
    assert serializer.decode(b"1234").value == 1234
    assert serializer.encode(Entry(True))[0] >= 0x80, "a bool is not a counter"
    assert _serializer("pickle", "none").encode(Entry(2**64))[0] >= 0x80, "past 64 bits: not a counter"
    assert serializer.encode(Entry(5, tags=(("t", 1),)))[0] >= 0x80, "a tagged int needs the frame"


def test_a_cached_none_has_a_frame_of_its_own() -> None:
    serializer = Serializer()
    decoded = serializer.decode(serializer.encode(Entry(None, fresh_until=10.0, ttl=5.0)))
    assert decoded == Entry(None, fresh_until=10.0, ttl=5.0)


def test_pickle_data_signed_with_another_key_is_refused() -> None:
    encoded = _serializer("pickle", "none").encode(Entry({"a": 1}))
    intruder = Serializer("json", pickle_key=OTHER_KEY)
    with pytest.raises(CodecError, match="signature"):
        intruder.decode(encoded)


def test_unsigned_or_tampered_pickle_data_is_refused_before_unpickling() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("unpickled an unsigned payload",))

    serializer = _serializer("pickle", "none")
    header = bytes((0x80 | CODEC_IDS["pickle"] << 3, 0x10))
    with pytest.raises(CodecError, match="signature"):
        serializer.decode(header + b"\x00" * 32 + pickle.dumps(Boom()))
    with pytest.raises(CodecError, match="too short"):
        serializer.decode(header + b"short")
    good = bytearray(serializer.encode(Entry("value")))
    good[-1] ^= 0x01
    with pytest.raises(CodecError, match="signature"):
        serializer.decode(bytes(good))


def test_pickle_entries_are_unreadable_without_a_key() -> None:
    encoded = _serializer("pickle", "none").encode(Entry(1.5))
    with pytest.raises(CodecError, match="codec id 3"):
        Serializer().decode(encoded)


def test_pickle_key_rotation_reads_entries_signed_with_an_older_key() -> None:
    old = Serializer("pickle", pickle_key=OTHER_KEY).encode(Entry({1, 2}))
    rotated = Serializer("pickle", pickle_key=[KEY, OTHER_KEY])
    assert rotated.decode(old).value == {1, 2}


@pytest.mark.parametrize("key", ["", "short", b"x" * 31, []])
def test_pickle_needs_a_long_key(key: Any) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        PickleCodec(key)


def test_pickle_codec_without_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pickle_key"):
        Serializer("pickle")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "yaml"}, "json, msgpack or pickle"),
        ({"compression": "brotli"}, "none, gzip, lz4 or zstd"),
    ],
)
def test_unknown_codec_or_compression_is_a_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Serializer(**options)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x88",  # header without flags
        b"\x88\x20{}",  # unknown frame version
        b"\x88\x12\x00\x00",  # META flag, truncated metadata
        b"\x88\x14\x05",  # TAGS flag, truncated tags
        b"\x88\x10{not json",
        b"\xc8\x10{}",  # custom codec id 9 not configured
        b"\x8f\x10xx",  # compression id 7 does not exist
        b"\x89\x10not gzip",
        b"12x",  # not a plain int either
    ],
)
def test_undecodable_bytes_raise_codec_error_never_anything_else(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"undecodable|signature"):
        Serializer().decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Serializer(pickle_key=KEY).decode(data)


def test_a_decompression_bomb_is_refused() -> None:
    big = Entry("a" * 100_000)
    for compression in ("gzip", "lz4", "zstd"):
        encoded = Serializer(compression=compression, compress_min_size=0).encode(big)
        assert len(encoded) < 2000
        small_reader = Serializer(compression=compression, max_decoded_size=10_000)
        with pytest.raises(CodecError, match="undecodable"):
            small_reader.decode(encoded)


def test_a_value_the_codec_cannot_encode_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="json cache codec") as info:
        Serializer().encode(Entry({1, 2}))
    assert info.value.details == {"codec": "json", "type": "set"}


class UpperCodec:
    """A custom codec: strings stored upper-cased."""

    name: ClassVar[str] = "upper"
    codec_id: ClassVar[int] = 9

    def encode(self, value: Any) -> bytes:
        return str(value).upper().encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()


def test_a_custom_codec_writes_and_readers_that_know_it_read() -> None:
    writer = Serializer(UpperCodec())
    encoded = writer.encode(Entry("hello"))
    assert encoded[0] == 0x80 | 9 << 3
    assert writer.decode(encoded).value == "HELLO"
    assert Serializer(codecs=[UpperCodec()]).decode(encoded).value == "HELLO"
    with pytest.raises(CodecError, match="codec id 9"):
        Serializer().decode(encoded)


def test_custom_codec_ids_are_checked() -> None:
    class Bad(UpperCodec):
        codec_id: ClassVar[int] = 3

    with pytest.raises(ConfigError, match="8 to 15"):
        Serializer(Bad())
    with pytest.raises(ConfigError, match="share codec_id 9"):
        Serializer(UpperCodec(), codecs=[UpperCodec()])
