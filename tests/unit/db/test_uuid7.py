"""uuid7(): RFC 9562 layout, strictly increasing within a process, time recoverable."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainspring import _ids
from mainspring.db import uuid7, uuid7_time


def test_version_and_variant_bits_follow_rfc_9562() -> None:
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert (value.int >> 76) & 0xF == 0b0111
        assert (value.int >> 62) & 0b11 == 0b10


def test_ids_made_in_a_tight_loop_are_strictly_increasing_and_unique() -> None:
    ids = [uuid7() for _ in range(20_000)]  # thousands land in the same millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)  # text order too (CHAR(32) columns)


def test_the_timestamp_is_the_creation_time_in_milliseconds() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    made = uuid7_time(uuid7())
    after = dt.datetime.now(dt.UTC)
    assert before <= made <= after
    assert made.tzinfo is dt.UTC


def test_uuid7_time_refuses_other_versions() -> None:
    with pytest.raises(ValueError, match="version-4 UUID, not version 7"):
        uuid7_time(uuid.uuid4())


@contextmanager
def fake_clock() -> Iterator[list[int]]:
    """Make ``time.time_ns()`` return ``clock[0]``, with a fresh uuid7 generator; undone on exit."""
    clock = [time.time_ns()]
    real = time.time_ns
    time.time_ns = lambda: clock[0]
    _ids._reset_after_fork()
    try:
        yield clock
    finally:
        time.time_ns = real
        _ids._reset_after_fork()


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=2**48 - 2), min_size=1, max_size=30))
def test_ordering_holds_whatever_the_clock_does(clock_ms: list[int]) -> None:
    # The clock may jump forward, stand still or step back: ids keep increasing regardless, and an
    # id never carries a time earlier than the latest the clock showed.
    ids = []
    latest = -1
    with fake_clock() as clock:
        for ms in clock_ms:
            clock[0] = ms * 1_000_000
            ids.append(uuid7())
            latest = max(latest, ms)
            assert ids[-1].int >> 80 >= latest
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_the_timestamp_round_trips(ms: int) -> None:
    with fake_clock() as clock:
        clock[0] = ms * 1_000_000
        value = uuid7()
    assert value.int >> 80 == ms
    if ms < 253402300800000:  # datetime's range ends with the year 9999
        assert uuid7_time(value) == dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def test_counter_overflow_borrows_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink the counter so that overflow is reachable; the rule under test stays the same.
    monkeypatch.setattr(_ids, "_COUNTER_MAX", 3)
    monkeypatch.setattr(_ids, "_SEED_MASK", 0)
    with fake_clock() as clock:
        clock[0] = 5_000 * 1_000_000
        ids = [uuid7() for _ in range(6)]
    assert [i.int >> 80 for i in ids] == [5000, 5000, 5000, 5000, 5001, 5001]
    assert ids == sorted(ids)


def test_ids_from_many_threads_are_unique_and_increasing_per_thread() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def work(out: list[uuid.UUID]) -> None:
        for _ in range(2000):
            out.append(uuid7())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in results for i in out]
    assert len(set(everything)) == len(everything)
    assert all(out == sorted(out) for out in results)


def test_the_text_form_is_the_canonical_one_and_message_ids_use_it() -> None:
    from mainspring.messaging import Message

    text = _ids.uuid7_str()
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    ids = [Message({"n": i}).id for i in range(200)]
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
