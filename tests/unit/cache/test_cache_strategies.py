"""Cache strategies over MemoryCache: read-through, write-through, write-around and write-behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mainspring.cache import MemoryCache
from mainspring.cache.strategies import CacheStrategies, MemoryWriteQueue
from mainspring.errors import InternalError, ValidationError
from mainspring.testing import capture_logs


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling), failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the condition is plain state, not an event
            await asyncio.sleep(0.005)


class Store:
    """A fake database: a dict, batch and single writers, and failures on demand."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.batches: list[dict[str, Any]] = []
        self.fail_next = 0

    async def write(self, key: str, value: Any) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database down")
        self.rows[key] = value

    async def write_batch(self, batch: dict[str, Any]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database down")
        self.batches.append(dict(batch))
        self.rows.update(batch)


def fast(cache: MemoryCache, **options: Any) -> CacheStrategies:
    options.setdefault("poll_interval", 0.01)
    options.setdefault("backoff", 0.01)
    options.setdefault("delay", 0.02)
    return CacheStrategies(cache, **options)


async def test_read_through_loads_once_for_concurrent_misses_then_serves_the_cache() -> None:
    cache = MemoryCache()
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return {"id": 1}

    strategies = CacheStrategies(cache)
    results = await asyncio.gather(*(strategies.read_through("user:1", load, ttl=60) for _ in range(50)))
    assert results == [{"id": 1}] * 50
    assert await strategies.read_through("user:1", load) == {"id": 1}
    assert calls == 1


async def test_write_through_stores_then_caches() -> None:
    cache, store = MemoryCache(), Store()
    strategies = CacheStrategies(cache)
    assert await strategies.write_through("user:1", {"name": "ada"}, store.write, tags=["users"]) == {
        "name": "ada"
    }
    assert store.rows == {"user:1": {"name": "ada"}}
    assert await cache.get("user:1") == {"name": "ada"}
    await cache.invalidate_tags("users")
    assert await cache.get("user:1") is None


async def test_a_failed_write_through_leaves_the_cache_untouched() -> None:
    cache, store = MemoryCache(), Store()
    await cache.set("user:1", "old")
    store.fail_next = 1
    with pytest.raises(ConnectionError):
        await CacheStrategies(cache).write_through("user:1", "new", store.write)
    assert await cache.get("user:1") == "old"
    assert store.rows == {}


async def test_write_around_stores_then_drops_the_cached_value() -> None:
    cache, store = MemoryCache(), Store()
    await cache.set("user:1", "old")
    await CacheStrategies(cache).write_around("user:1", "new", store.write)
    assert store.rows == {"user:1": "new"}
    assert not await cache.exists("user:1")


async def test_a_failed_write_around_keeps_the_cached_value() -> None:
    cache, store = MemoryCache(), Store()
    await cache.set("user:1", "old")
    store.fail_next = 1
    with pytest.raises(ConnectionError):
        await CacheStrategies(cache).write_around("user:1", "new", store.write)
    assert await cache.get("user:1") == "old"


async def test_write_behind_caches_at_once_and_stores_later_in_one_batch() -> None:
    cache, store = MemoryCache(), Store()
    # A frozen clock makes every write due at the same moment however slowly the box queues them.
    now = [1_000.0]
    strategies = fast(cache, delay=0.5, clock=lambda: now[0])
    strategies.register_writer("rows", store.write_batch)
    async with strategies:
        for i in range(10):
            await strategies.write_behind(f"k{i}", i, "rows")
        await strategies.write_behind("k0", "last", "rows")  # same key: the last value wins
        assert await cache.get("k0") == "last"
        await asyncio.sleep(0.05)  # several polls of the flusher: nothing is due yet
        assert store.rows == {}
        now[0] += 1.0
        await eventually(lambda: len(store.rows) == 10)
        assert store.rows["k0"] == "last"
        assert len(store.batches) == 1
        assert await strategies.pending() == 0
        stats = strategies.write_behind_stats()
        assert (stats.queued, stats.stored, stats.batches, stats.failures) == (11, 10, 1, 0)


async def test_concurrent_write_behind_calls_are_all_stored_once_each() -> None:
    cache, store = MemoryCache(), Store()
    strategies = fast(cache, batch_size=50, delay=0.01)
    strategies.register_writer("rows", store.write_batch)
    async with strategies:
        await asyncio.gather(*(strategies.write_behind(f"k{i}", i, "rows") for i in range(500)))
        await eventually(lambda: len(store.rows) == 500)
    assert store.rows == {f"k{i}": i for i in range(500)}
    assert sum(len(batch) for batch in store.batches) == 500


async def test_write_behind_batches_are_bounded_by_batch_size() -> None:
    cache, store = MemoryCache(), Store()
    strategies = fast(cache, batch_size=3, delay=0.02)
    strategies.register_writer("rows", store.write_batch)
    async with strategies:
        for i in range(7):
            await strategies.write_behind(f"k{i}", i, "rows")
        await eventually(lambda: len(store.rows) == 7)
    assert max(len(batch) for batch in store.batches) == 3


async def test_a_failing_store_is_retried_with_backoff_until_it_succeeds() -> None:
    cache, store = MemoryCache(), Store()
    store.fail_next = 3
    strategies = fast(cache)
    strategies.register_writer("rows", store.write_batch)
    with capture_logs() as logs:
        async with strategies:
            await strategies.write_behind("k", "v", "rows")
            await eventually(lambda: store.rows == {"k": "v"})
            assert strategies.write_behind_stats().failures == 3
    retries = [e for e in logs if e["event"] == "write-behind batch failed; will retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    assert "ConnectionError: database down" in retries[0]["error"]


async def test_stop_flushes_writes_that_are_not_due_yet() -> None:
    cache, store = MemoryCache(), Store()
    strategies = fast(cache, delay=60)
    strategies.register_writer("rows", store.write_batch)
    async with strategies:
        await strategies.write_behind("a", 1, "rows")
        await strategies.write_behind("b", 2, "rows", delay=120)
        await asyncio.sleep(0.05)
        assert store.rows == {}
    assert store.rows == {"a": 1, "b": 2}


async def test_writes_that_cannot_be_stored_on_stop_are_reported_as_lost_in_memory() -> None:
    cache, store = MemoryCache(), Store()
    store.fail_next = 100
    strategies = fast(cache, delay=60)
    strategies.register_writer("rows", store.write_batch)
    with capture_logs() as logs:
        async with strategies:
            await strategies.write_behind("a", 1, "rows")
    lost = [e for e in logs if e["event"] == "write-behind stopped with writes not stored"]
    assert len(lost) == 1
    assert (lost[0]["pending"], lost[0]["outcome"]) == (1, "lost")


async def test_the_flusher_is_a_named_task_that_ends_on_stop() -> None:
    strategies = fast(MemoryCache())

    def flushers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "mainspring.cache:write-behind"]

    assert flushers() == []  # nothing started in __init__
    async with strategies:
        assert len(flushers()) == 1
    await asyncio.sleep(0)
    assert flushers() == []


async def test_write_behind_before_start_is_refused() -> None:
    strategies = CacheStrategies(MemoryCache())
    strategies.register_writer("rows", Store().write_batch)
    with pytest.raises(InternalError, match="started"):
        await strategies.write_behind("k", 1, "rows")


async def test_a_writer_without_a_stable_name_is_refused() -> None:
    store = Store()
    async with fast(MemoryCache()) as strategies:
        with pytest.raises(ValidationError, match="no stable name"):
            await strategies.write_behind("k", 1, lambda batch: store.write_batch(batch))
        with pytest.raises(ValidationError, match="no write-behind writer registered"):
            await strategies.write_behind("k", 1, "nobody")


async def test_a_module_level_writer_is_registered_by_its_qualified_name() -> None:
    async with fast(MemoryCache()) as strategies:
        await strategies.write_behind("k", 1, module_level_writer)
        await eventually(lambda: STORED.get("k") == 1)


STORED: dict[str, Any] = {}


async def module_level_writer(batch: dict[str, Any]) -> None:
    STORED.update(batch)


def test_a_name_cannot_be_registered_twice_for_different_writers() -> None:
    strategies = CacheStrategies(MemoryCache())
    strategies.register_writer("rows", Store().write_batch)
    with pytest.raises(ValidationError, match="already registered"):
        strategies.register_writer("rows", Store().write_batch)
    with pytest.raises(ValidationError, match="NUL"):
        strategies.register_writer("a\x00b", Store().write_batch)


@pytest.mark.parametrize(
    ("option", "value"),
    [("delay", -1), ("backoff", 0), ("lease", float("inf")), ("batch_size", 0), ("poll_interval", "1")],
)
def test_bad_options_are_refused(option: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=option):
        CacheStrategies(MemoryCache(), **{option: value})


async def test_the_memory_queue_keeps_a_value_replaced_while_it_was_being_stored() -> None:
    queue = MemoryWriteQueue()
    await queue.put("w", "k", 1, due=0)
    [claimed] = await queue.claim(10, 10, hide_until=40)
    await queue.put("w", "k", 2, due=5)  # replaced while the store of 1 runs
    await queue.ack([claimed])
    assert await queue.pending() == 1
    [again] = await queue.claim(10, 10, hide_until=40)
    assert again.value == 2


async def test_the_memory_queue_hides_claimed_writes_until_their_lease_ends() -> None:
    queue = MemoryWriteQueue()
    await queue.put("w", "k", 1, due=0)
    assert len(await queue.claim(10, 10, hide_until=40)) == 1
    assert await queue.claim(39, 10, hide_until=80) == []
    assert [w.value for w in await queue.claim(40, 10, hide_until=80)] == [1]
    assert await queue.next_due() == 80
