"""The PostgreSQL advisory-lock key: a stable signed 64-bit digest of the lock name."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from mainspring.locks.postgres import advisory_lock_key

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def test_key_is_pinned_so_it_never_changes_between_releases() -> None:
    # Processes on different versions must agree on the key of a name, or they would not exclude.
    assert advisory_lock_key("order:42") == -6790918684214513126
    assert advisory_lock_key("é") == -4572525157356798340


def test_key_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = "from mainspring.locks.postgres import advisory_lock_key as k; print(k('order:42'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == advisory_lock_key("order:42")


@given(st.text(min_size=1, max_size=512))
def test_key_fits_a_postgres_bigint_and_is_deterministic(name: str) -> None:
    key = advisory_lock_key(name)
    assert INT64_MIN <= key <= INT64_MAX
    assert advisory_lock_key(name) == key


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_different_names_get_different_keys(first: str, second: str) -> None:
    # A collision is possible in principle (2^-64 per pair) but never for generated examples.
    if first != second:
        assert advisory_lock_key(first) != advisory_lock_key(second)
