"""``CircuitBreaker``: windows, thresholds, half-open probes, listeners, concurrency and bad inputs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from resilience_fakes import FakeClock

from mainspring.errors import ServiceUnavailableError, ValidationError
from mainspring.resilience import CircuitBreaker, CircuitOpenError, CircuitState, StateChange
from mainspring.testing import capture_logs


def make(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    options: dict[str, Any] = {"window_size": 10, "minimum_calls": 4, "open_duration": 30, "clock": clock}
    options.update(kwargs)
    return CircuitBreaker("payments", **options)


def succeed() -> str:
    return "ok"


def fail() -> str:
    raise ConnectionError("down")


def run(breaker: CircuitBreaker, outcomes: str) -> None:
    """Call through the breaker once per letter: ``s`` succeeds, ``f`` fails."""
    for letter in outcomes:
        with contextlib.suppress(ConnectionError):
            breaker.call_sync(succeed if letter == "s" else fail)


def trip(breaker: CircuitBreaker) -> None:
    run(breaker, "ffff")
    assert breaker.state is CircuitState.OPEN


def test_opens_when_failure_rate_reaches_threshold(clock: FakeClock) -> None:
    breaker = make(clock)
    run(breaker, "ssf")
    assert breaker.state is CircuitState.CLOSED
    run(breaker, "f")  # 2 of 4 = 50%
    assert breaker.state is CircuitState.OPEN
    assert breaker.stats().times_opened == 1


def test_stays_closed_below_minimum_calls(clock: FakeClock) -> None:
    breaker = make(clock, minimum_calls=5)
    run(breaker, "ffff")
    assert breaker.state is CircuitState.CLOSED


def test_stays_closed_below_threshold_as_window_slides(clock: FakeClock) -> None:
    breaker = make(clock, window_size=4, failure_rate_threshold=0.8)
    run(breaker, "fffs" + "s" * 20 + "ffs")
    assert breaker.state is CircuitState.CLOSED


def test_open_circuit_refuses_calls_with_retry_after(clock: FakeClock) -> None:
    breaker = make(clock)
    trip(breaker)
    clock.advance(10)
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(CircuitOpenError) as caught:
        breaker.call_sync(counted)
    assert calls == 0
    assert caught.value.retry_after == pytest.approx(20)
    assert isinstance(caught.value, ServiceUnavailableError)
    problem = caught.value.to_problem()
    assert (problem["status"], problem["code"], problem["retry_after"]) == (503, "circuit_open", 20)
    assert "payments" in caught.value.message
    assert breaker.stats().rejected_calls == 1


def test_half_open_probes_that_pass_close_the_circuit(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30)
    assert breaker.state is CircuitState.HALF_OPEN
    run(breaker, "s")
    assert breaker.state is CircuitState.HALF_OPEN
    run(breaker, "s")
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats().window_calls == 0


def test_half_open_probes_that_fail_reopen_for_another_open_duration(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30)
    run(breaker, "sf")  # 50% of the probes failed
    assert breaker.state is CircuitState.OPEN
    clock.advance(29)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1)
    assert breaker.state is CircuitState.HALF_OPEN


def test_slow_calls_open_the_circuit(clock: FakeClock) -> None:
    breaker = make(clock, slow_call_duration=2, slow_call_rate_threshold=0.5)

    def slow() -> None:
        clock.advance(3)

    for _ in range(2):
        breaker.call_sync(succeed)
        breaker.call_sync(slow)
    assert breaker.state is CircuitState.OPEN
    stats = breaker.stats()
    assert (stats.slow_calls, stats.failed_calls, stats.successful_calls) == (2, 0, 4)


def test_time_window_forgets_failures_older_than_its_size(clock: FakeClock) -> None:
    breaker = make(clock, window_type="time", window_size=10, minimum_calls=4)
    run(breaker, "fff")
    clock.advance(10)
    run(breaker, "ssf")
    # The first three failures aged out: 1 of 3 calls in the window, below minimum_calls.
    assert breaker.stats().window_calls == 3
    run(breaker, "f")
    assert breaker.state is CircuitState.OPEN


def test_ignored_errors_count_as_nothing_and_unrecorded_ones_as_success(clock: FakeClock) -> None:
    breaker = make(clock, record_on=ConnectionError, ignore_on=KeyError)
    for error in (KeyError, KeyError, ValueError, ValueError, ConnectionError):
        with pytest.raises(error), breaker:
            raise error("x")
    stats = breaker.stats()
    assert (stats.ignored_calls, stats.successful_calls, stats.failed_calls) == (2, 2, 1)
    assert stats.window_calls == 3
    assert breaker.state is CircuitState.CLOSED


def test_listeners_see_every_transition_and_a_broken_one_is_logged(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=1)
    seen: list[StateChange] = []
    breaker.add_listener(seen.append)

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    remove = breaker.add_listener(broken)
    with capture_logs() as logs:
        trip(breaker)
    assert any(r["event"] == "circuit breaker listener failed" for r in logs)
    remove()
    clock.advance(30)
    run(breaker, "s")
    assert [(c.previous, c.state) for c in seen] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert seen[0].name == "payments"
    assert "failure rate 100%" in seen[0].reason


def test_outcome_of_a_call_admitted_before_the_circuit_opened_does_not_move_it(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=1)
    with breaker:  # a call admitted while CLOSED...
        trip(breaker)
        clock.advance(30)
        assert breaker.state is CircuitState.HALF_OPEN
    # ...ends (successfully) in HALF_OPEN: it is no probe, so the probe slot is still free.
    assert breaker.state is CircuitState.HALF_OPEN
    run(breaker, "s")
    assert breaker.state is CircuitState.CLOSED


async def test_async_decorator_and_context_manager(clock: FakeClock) -> None:
    breaker = make(clock)

    @breaker
    async def ok() -> int:
        return 1

    @breaker
    async def broken() -> int:
        raise ConnectionError("down")

    assert await ok() == 1
    for _ in range(3):  # 3 failures of 4 calls: 75% >= 50%
        with pytest.raises(ConnectionError):
            await broken()
    with pytest.raises(CircuitOpenError):
        async with breaker:
            pass
    assert breaker.stats().rejected_calls == 1


async def test_concurrent_tasks_get_only_the_permitted_probes(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=3)
    trip(breaker)
    clock.advance(30)
    gate = asyncio.Event()
    running = 0
    most = 0

    async def probe() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1

    tasks = [asyncio.create_task(breaker.call(probe)) for _ in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 3
    assert sum(r is None for r in results) == 3
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 97
    assert breaker.state is CircuitState.CLOSED


async def test_a_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=1)
    trip(breaker)
    clock.advance(30)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        await breaker.call(asyncio.sleep, 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await breaker.call(asyncio.sleep, 0)
    assert breaker.state is CircuitState.CLOSED


async def test_nested_context_managers_in_concurrent_tasks_keep_their_own_calls(clock: FakeClock) -> None:
    breaker = make(clock, minimum_calls=10, window_size=100)

    async def one(i: int) -> None:
        async with breaker:
            await asyncio.sleep(0)
            async with breaker:
                await asyncio.sleep(0)
                if i % 4 == 0:
                    raise ConnectionError("inner")

    results = await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)
    assert sum(isinstance(r, ConnectionError) for r in results) == 10
    stats = breaker.stats()
    # Inner and outer both fail for i % 4 == 0: 20 failures of 80 calls.
    assert (stats.failed_calls, stats.successful_calls, stats.window_calls) == (20, 60, 80)
    assert breaker.state is CircuitState.CLOSED


def test_threads_hammering_the_sync_path_keep_counts_consistent() -> None:
    breaker = CircuitBreaker("db", window_size=1000, minimum_calls=1000, failure_rate_threshold=1.0)
    per_thread = 500

    @breaker
    def call(i: int) -> None:
        if i % 5 == 0:
            raise ConnectionError("down")

    def worker() -> None:
        for i in range(per_thread):
            with contextlib.suppress(ConnectionError):
                call(i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = breaker.stats()
    assert stats.failed_calls == 8 * per_thread // 5
    assert stats.successful_calls + stats.failed_calls == 8 * per_thread
    assert stats.window_calls == 1000
    assert stats.state is CircuitState.CLOSED


def test_threads_in_half_open_get_only_the_permitted_probes(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30)
    gate = threading.Event()
    admitted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        def probe() -> None:
            with lock:
                admitted.append(i)
            gate.wait(5)

        try:
            breaker.call_sync(probe)
        except CircuitOpenError:
            with lock:
                refused.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for _ in range(5000):  # bounded: a thread dying of something unexpected must not hang the test
        if len(admitted) + len(refused) >= 20 or len(refused) >= 18:
            break
        threading.Event().wait(0.002)
    gate.set()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused)) == (2, 18)
    assert breaker.state is CircuitState.CLOSED


def test_reset_closes_and_forgets(clock: FakeClock) -> None:
    breaker = make(clock)
    trip(breaker)
    breaker.reset()
    stats = breaker.stats()
    assert (stats.state, stats.failed_calls, stats.window_calls) == (CircuitState.CLOSED, 0, 0)
    assert repr(breaker) == "CircuitBreaker('payments', state='closed')"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": -0.1}, "slow_call_rate_threshold"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"window_type": "sliding"}, "window_type"),
        ({"window_size": 0}, "window_size"),
        ({"window_type": "time", "window_size": 2.5}, "window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window_size": 5, "minimum_calls": 6}, "minimum_calls"),
        ({"open_duration": -1}, "open_duration"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"record_on": "Exception"}, "record_on"),
        ({"ignore_on": (KeyError, 3)}, "ignore_on"),
    ],
)
def test_bad_arguments_are_validation_errors_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        CircuitBreaker("x", **kwargs)


@pytest.mark.parametrize("name", ["", "  ", None])
def test_breaker_needs_a_name(name: object) -> None:
    with pytest.raises(ValidationError, match="name"):
        CircuitBreaker(name)  # type: ignore[arg-type]


def test_permits_report_outcomes_without_exceptions_and_only_once(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(4):
        permit = breaker.acquire()
        permit.record_failure()  # e.g. an HTTP 503 response: no exception involved
        permit.record_success()  # ignored: the first report counts
        permit.release()
    stats = breaker.stats()
    assert (stats.failed_calls, stats.successful_calls, stats.ignored_calls) == (4, 0, 0)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_a_released_probe_permit_lets_another_probe_go(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=1)
    trip(breaker)
    clock.advance(30)
    first = breaker.acquire()
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert "probes in flight" in caught.value.message
    first.release()
    second = breaker.acquire()
    second.record(KeyError("classified by record_on: a failure"))
    assert breaker.state is CircuitState.OPEN
