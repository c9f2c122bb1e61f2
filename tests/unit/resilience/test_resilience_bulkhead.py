"""``Bulkhead``: a concurrency limit with a bounded FIFO queue and a queue timeout, under real tasks."""

from __future__ import annotations

import asyncio

import pytest

from mainspring.errors import ServiceUnavailableError, ValidationError
from mainspring.resilience import Bulkhead, BulkheadFullError


async def test_never_more_than_max_concurrent_calls_run_at_once() -> None:
    bulkhead = Bulkhead("search", 4, max_queue=200, queue_timeout=10)
    running = 0
    most = 0

    @bulkhead
    async def work(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        return i

    results = await asyncio.gather(*(work(i) for i in range(200)))
    assert results == list(range(200))
    assert most == 4
    stats = bulkhead.stats()
    assert (stats.active, stats.queued, stats.accepted, stats.rejected) == (0, 0, 200, 0)


async def test_full_queue_refuses_at_once_with_a_503() -> None:
    bulkhead = Bulkhead("search", 2, max_queue=3)
    gate = asyncio.Event()
    results = await asyncio.gather(
        *(bulkhead.call(gate.wait) for _ in range(10)),
        _open_later(gate),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BulkheadFullError)]
    assert len(refused) == 5
    assert isinstance(refused[0], ServiceUnavailableError)
    assert refused[0].to_problem()["status"] == 503
    assert refused[0].code == "bulkhead_full"
    assert "'search' is full" in refused[0].message
    stats = bulkhead.stats()
    assert (stats.accepted, stats.rejected, stats.active) == (5, 5, 0)


async def _open_later(gate: asyncio.Event) -> None:
    await asyncio.sleep(0.01)
    gate.set()


async def test_no_queue_means_refuse_when_all_slots_are_busy() -> None:
    bulkhead = Bulkhead("one", 1)
    async with bulkhead:
        with pytest.raises(BulkheadFullError):
            async with bulkhead:
                pass
    async with bulkhead:
        assert bulkhead.stats().active == 1


async def test_waiting_longer_than_queue_timeout_is_refused() -> None:
    bulkhead = Bulkhead("slow", 1, max_queue=5, queue_timeout=0.01)
    async with bulkhead:
        with pytest.raises(BulkheadFullError, match="queue timeout") as caught:
            await bulkhead.acquire()
    assert caught.value.details["queue_timeout"] == 0.01
    stats = bulkhead.stats()
    assert (stats.timed_out, stats.queued, stats.active) == (1, 0, 0)


async def test_waiters_get_slots_in_arrival_order() -> None:
    bulkhead = Bulkhead("fifo", 1, max_queue=10)
    order: list[int] = []

    async def work(i: int) -> None:
        async with bulkhead:
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(work(i)))
        await asyncio.sleep(0)  # each task queues before the next one starts
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_a_cancelled_waiter_leaves_the_queue_and_leaks_no_slot() -> None:
    bulkhead = Bulkhead("cancel", 1, max_queue=2)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    assert bulkhead.stats().queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.stats().queued == 0
    bulkhead.release()
    assert bulkhead.stats().active == 0


async def test_a_slot_handed_to_a_waiter_that_is_cancelled_is_passed_on() -> None:
    bulkhead = Bulkhead("race", 1, max_queue=2)
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    bulkhead.release()  # the slot goes to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # so `second` gets it
    assert bulkhead.stats().active == 1
    bulkhead.release()
    assert bulkhead.stats().active == 0


async def test_an_error_in_the_call_gives_the_slot_back() -> None:
    bulkhead = Bulkhead("errors", 1)

    @bulkhead
    async def broken() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await broken()
    assert bulkhead.stats().active == 0


def test_decorating_a_sync_function_is_refused() -> None:
    with pytest.raises(ValidationError, match="coroutine function"):
        Bulkhead("x", 1)(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("x", 0), {}, "max_concurrent"),
        (("x", 1.5), {}, "max_concurrent"),
        (("x", 1), {"max_queue": -1}, "max_queue"),
        (("x", 1), {"queue_timeout": 0}, "queue_timeout"),
        (("", 1), {}, "name"),
    ],
)
def test_bad_arguments_are_validation_errors_at_construction(
    args: tuple[object, ...], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        Bulkhead(*args, **kwargs)  # type: ignore[arg-type]
