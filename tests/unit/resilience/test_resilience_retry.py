"""``retry``: bounded, jittered exponential backoff for sync and async functions."""

from __future__ import annotations

import asyncio
import threading

import pytest
from resilience_fakes import FakeClock

from mainspring.errors import ValidationError
from mainspring.resilience import retry
from mainspring.testing import capture_logs


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``"ok"``."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "ok"

    async def async_call(self) -> str:
        await asyncio.sleep(0)
        return self()


def policy(clock: FakeClock, **kwargs: object):  # type: ignore[no-untyped-def]
    options = {"sleep": clock.sleep, "sync_sleep": clock.sleep_sync, "clock": clock, "jitter": lambda: 1.0}
    options.update(kwargs)
    return retry(**options)  # type: ignore[arg-type]


async def test_async_function_succeeds_after_transient_failures(clock: FakeClock) -> None:
    flaky = Flaky(2)
    decorated = policy(clock, max_attempts=3)(flaky.async_call)
    assert await decorated() == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.2]


def test_sync_function_succeeds_after_transient_failures(clock: FakeClock) -> None:
    flaky = Flaky(2)
    decorated = policy(clock, max_attempts=5)(flaky)
    assert decorated() == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.2]


async def test_last_error_is_reraised_unchanged_with_a_note(clock: FakeClock) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError, match="failure 3") as caught:
        await policy(clock, max_attempts=3).call(flaky.async_call)
    assert flaky.calls == 3
    assert any("gave up" in note and "max_attempts=3" in note for note in caught.value.__notes__)


def test_delays_grow_exponentially_and_are_capped(clock: FakeClock) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        policy(clock, max_attempts=7, initial_delay=1, multiplier=3, max_delay=20).call_sync(flaky)
    assert clock.sleeps == [1, 3, 9, 20, 20, 20]


def test_full_jitter_draws_delay_between_zero_and_cap(clock: FakeClock) -> None:
    draws = iter([0.5, 0.25, 0.0])
    flaky = Flaky(3)
    policy(clock, max_attempts=4, initial_delay=2, jitter=lambda: next(draws)).call_sync(flaky)
    assert clock.sleeps == [1.0, 1.0, 0.0]


def test_max_time_stops_retrying_before_the_budget_is_passed(clock: FakeClock) -> None:
    flaky = Flaky(100)
    with pytest.raises(ConnectionError) as caught:
        policy(clock, max_attempts=None, max_time=10, initial_delay=1, max_delay=4).call_sync(flaky)
    # Delays 1, 2, 4 (7 s), next 4 would end at 11 s > 10 s: four calls.
    assert flaky.calls == 4
    assert clock.sleeps == [1, 2, 4]
    assert "max_time=10" in caught.value.__notes__[0]


def test_errors_outside_retry_on_are_raised_at_once(clock: FakeClock) -> None:
    flaky = Flaky(1, error=KeyError)
    with pytest.raises(KeyError):
        policy(clock, retry_on=(ConnectionError, TimeoutError)).call_sync(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_dont_retry_on_wins_over_retry_on(clock: FakeClock) -> None:
    flaky = Flaky(1, error=ConnectionRefusedError)
    with pytest.raises(ConnectionRefusedError):
        policy(clock, retry_on=OSError, dont_retry_on=ConnectionRefusedError).call_sync(flaky)
    assert flaky.calls == 1


def test_predicate_decides_what_is_retried(clock: FakeClock) -> None:
    flaky = Flaky(2, error=ValueError)
    decorated = policy(clock, retry_on=lambda e: "failure 1" in str(e))(flaky)
    with pytest.raises(ValueError, match="failure 2"):
        decorated()
    assert flaky.calls == 2


async def test_cancellation_is_never_retried(clock: FakeClock) -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy(clock, max_attempts=5).call(cancelled)
    assert calls == 1


def test_each_retry_is_logged_with_attempt_and_delay(clock: FakeClock) -> None:
    with capture_logs() as logs:
        policy(clock, max_attempts=3).call_sync(Flaky(2))
    retries = [r for r in logs if r["event"] == "retrying after error"]
    assert [(r["attempt"], r["delay"]) for r in retries] == [(1, 0.1), (2, 0.2)]
    assert retries[0]["error"] == "ConnectionError"


async def test_many_concurrent_tasks_share_one_policy(clock: FakeClock) -> None:
    shared = policy(clock, max_attempts=3)
    flakies = [Flaky(i % 3) for i in range(100)]
    results = await asyncio.gather(*(shared.call(f.async_call) for f in flakies))
    assert results == ["ok"] * 100
    assert [f.calls for f in flakies] == [i % 3 + 1 for i in range(100)]


def test_threads_share_one_policy() -> None:
    shared = retry(max_attempts=3, initial_delay=0.001, max_delay=0.001)
    flakies = [Flaky(i % 3) for i in range(16)]
    results: list[str] = []
    threads = [threading.Thread(target=lambda f=f: results.append(shared.call_sync(f))) for f in flakies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 16


def test_real_sleep_is_used_by_default() -> None:
    flaky = Flaky(1)
    assert retry(initial_delay=0.001)(flaky)() == "ok"
    assert flaky.calls == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": None}, "max_attempts"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_time": 0}, "max_time"),
        ({"initial_delay": 0}, "initial_delay"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"max_delay": 0.01}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"retry_on": "ConnectionError"}, "retry_on"),
        ({"retry_on": (ConnectionError, int)}, "retry_on"),
        ({"dont_retry_on": [KeyError]}, "dont_retry_on"),
    ],
)
def test_bad_arguments_are_validation_errors_at_construction(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field) as caught:
        retry(**kwargs)  # type: ignore[arg-type]
    assert caught.value.errors[0]["loc"] == [field]
