"""Cache keys: the key space of a cache, and decorator keys that are the same in every process."""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mainspring.cache import KeySpace, canonical, function_key
from mainspring.errors import ConfigError, ValidationError

# --- the key space ----------------------------------------------------------------------------------


def test_keys_carry_namespace_and_schema_version() -> None:
    space = KeySpace("orders", "v3")
    assert space.entry("user:1") == "orders:v3:user:1"
    assert space.tag("user:1") == "orders:__tag__:user:1"
    assert space.lease("user:1") == "orders:__lease__:user:1"
    assert space.prefix("user:") == "orders:v3:user:"


def test_long_keys_are_shortened_with_sha256_keeping_their_head() -> None:
    space = KeySpace("ns", "v1", max_key_length=100)
    key = "report:" + "x" * 200
    built = space.entry(key)
    assert built == f"ns:v1:{key[:36]}#{hashlib.sha256(key.encode()).hexdigest()}"
    assert space.entry("a" * 100) == "ns:v1:" + "a" * 100, "up to the limit a key is kept as it is"
    assert built.startswith(space.prefix("report:"))


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_distinct_keys_never_share_a_stored_key(a: str, b: str) -> None:
    space = KeySpace("ns", "v1", max_key_length=80)
    assert (space.entry(a) == space.entry(b)) == (a == b)


def test_a_shortened_key_cannot_collide_with_a_key_kept_as_it_is() -> None:
    space = KeySpace("ns", "v1", max_key_length=80)
    long_key = "y" * 81
    forged = space.shorten(long_key)
    assert len(forged) == 81
    assert space.shorten(forged) != forged, "a key that long is itself shortened, so it cannot pose as one"


@pytest.mark.parametrize(
    ("namespace", "version"),
    [("", "v1"), ("a:b", "v1"), ("ns", "__tag__"), ("ns", ""), ("-x", "v1"), (1, "v1")],
)
def test_bad_namespace_or_version_is_a_config_error(namespace: Any, version: Any) -> None:
    with pytest.raises(ConfigError, match="key space"):
        KeySpace(namespace, version)


def test_max_key_length_must_leave_room_for_the_digest() -> None:
    with pytest.raises(ConfigError, match="max_key_length"):
        KeySpace("ns", "v1", max_key_length=64)


# --- canonical arguments ----------------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


class UserQuery(BaseModel):
    user_id: int
    fields: list[str]


class Account:
    def __init__(self, number: str) -> None:
        self.number = number

    def __cache_key__(self) -> str:
        return self.number


def test_values_that_are_equal_in_python_but_differ_in_type_get_different_keys() -> None:
    forms = [
        canonical(v) for v in (1, 1.0, True, "1", b"1", (1,), [1], {1}, frozenset({1}), decimal.Decimal(1))
    ]
    assert len(set(forms)) == len(forms)


def test_containers_do_not_depend_on_insertion_order() -> None:
    assert canonical({"a": 1, "b": 2}) == canonical({"b": 2, "a": 1})
    assert canonical({"b", "a", "c"}) == canonical({"c", "b", "a"})


def test_strings_carry_their_length_so_separators_cannot_fake_structure() -> None:
    assert canonical(["a,b"]) != canonical(["a", "b"])
    assert canonical({"a": "1,b=2"}) != canonical({"a": "1", "b": "2"})


def test_rich_types_have_canonical_forms() -> None:
    assert canonical(Color.RED) == f"e{__name__}.Color.RED"
    assert canonical(Point(1, 2)) == f"c{__name__}.Point(x=i1,y=i2)"
    assert canonical(UserQuery(user_id=1, fields=["a"])) == canonical(UserQuery(user_id=1, fields=["a"]))
    assert canonical(Account("42")) == f"k{__name__}.Account(s2:42)"
    assert canonical(decimal.Decimal("1.50")) == canonical(decimal.Decimal("1.5"))
    assert canonical(dt.date(2024, 1, 2)) != canonical(dt.datetime(2024, 1, 2))
    assert canonical(uuid.UUID(int=5)) == "u" + uuid.UUID(int=5).hex


def test_an_unsupported_argument_type_says_how_to_key_it() -> None:
    with pytest.raises(ValidationError, match="__cache_key__"):
        canonical(object())


def test_function_keys_bind_arguments_with_defaults() -> None:
    def find(user_id: int, active: bool = True, *tags: str, limit: int = 10, **extra: Any) -> None: ...

    key = function_key(find, (7,), {})
    assert key.startswith(f"{__name__}.test_function_keys_bind_arguments_with_defaults.<locals>.find(")
    assert function_key(find, (7,), {}) == function_key(find, (), {"user_id": 7, "active": True})
    assert function_key(find, (7, True, "a"), {"x": 1}) != key
    with pytest.raises(ValidationError, match="cannot bind"):
        function_key(find, (), {})


def test_function_keys_leave_out_self() -> None:
    class Repo:
        def get(self, user_id: int) -> None: ...

    assert function_key(Repo.get, (Repo(), 1), {}) == function_key(Repo.get, (Repo(), 1), {})


# --- stable across processes ------------------------------------------------------------------------

_MODULE = textwrap.dedent(
    """
    import dataclasses, enum

    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    @dataclasses.dataclass(frozen=True)
    class Box:
        label: str
        size: int

    def target(a, b=2, *rest, c=None, **extra):
        return None
    """
)
_CHILD = textwrap.dedent(
    """
    import pickle, sys
    sys.path.insert(0, sys.argv[1])
    import keyfuncs_under_test as mod
    from mainspring.cache import function_key
    calls = pickle.load(sys.stdin.buffer)
    pickle.dump([function_key(mod.target, args, kwargs) for args, kwargs in calls], sys.stdout.buffer)
    """
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.decimals(allow_nan=False)
    | st.uuids()
    | st.datetimes()
    | st.dates()
)
hashables = st.integers() | st.text(max_size=6) | st.booleans()


def _values(module: Any) -> st.SearchStrategy[Any]:
    atoms = (
        scalars
        | st.sampled_from(list(module.Mood))
        | st.builds(module.Box, st.text(max_size=5), st.integers())
    )
    return st.recursive(
        atoms,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(hashables, inner, max_size=4)
            | st.sets(hashables, max_size=5)
            | st.frozensets(hashables, max_size=5)
        ),
        max_leaves=12,
    )


def _load_module(directory: Path) -> Any:
    (directory / "keyfuncs_under_test.py").write_text(_MODULE, encoding="utf-8")
    sys.path.insert(0, str(directory))
    try:
        import keyfuncs_under_test

        return keyfuncs_under_test
    finally:
        sys.path.remove(str(directory))


_DIR = Path(tempfile.mkdtemp(prefix="mainspring-keys-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
_MOD = _load_module(_DIR)


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(_values(_MOD), min_size=1, max_size=4).map(tuple),
            st.dictionaries(st.sampled_from(["c", "x", "y"]), _values(_MOD), max_size=2),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_the_key_builder_gives_the_same_keys_in_another_process(
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> None:
    here = [function_key(_MOD.target, args, kwargs) for args, kwargs in calls]
    # Another hash seed: any dependence on hash() (set order, dict of sets...) shows up as a mismatch.
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345" if os.environ.get("PYTHONHASHSEED") != "12345" else "54321",
    }
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(_DIR)],
        input=pickle.dumps(calls),
        capture_output=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert pickle.loads(child.stdout) == here
