"""Durable write-behind on Redis: pending writes survive a killed process and are stored after restart."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from typing import Any

import pytest

from mainspring.cache import CacheBackendError, MemoryCache
from mainspring.cache.strategies import CacheStrategies, RedisWriteQueue
from mainspring.errors import ValidationError
from mainspring.testing import ServiceURL

# The child queues writes whose store never finishes (a hung database), then gets SIGKILLed: some
# writes are claimed mid-store, the rest wait for their delay. None was stored.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from mainspring.cache import CacheBackendError, MemoryCache
    from mainspring.cache.strategies import CacheStrategies, RedisWriteQueue

    async def hang(batch):
        await asyncio.Event().wait()

    async def main(url, count):
        strategies = CacheStrategies(
            MemoryCache(), queue=RedisWriteQueue(url, name="crash"), delay=0.3, batch_size=50,
            lease=1.0, poll_interval=0.05,
        )
        strategies.register_writer("rows", hang)
        await strategies.start()
        for i in range(count // 2):
            await strategies.write_behind(f"k{i}", {"n": i}, "rows", delay=0.01)
        for i in range(count // 2, count):
            await strategies.write_behind(f"k{i}", {"n": i}, "rows")
        await asyncio.sleep(0.1)  # let the flusher claim a batch and hang in it
        print("queued", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def wait_for(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the condition is plain state, not an event
            await asyncio.sleep(0.01)


async def test_writes_pending_in_a_killed_process_are_all_stored_after_restart(redis_url: ServiceURL) -> None:
    count = 200
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(redis_url), str(count), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"queued"
    finally:
        child.kill()
        await child.wait()
    assert child.returncode == -9

    stored: dict[str, Any] = {}

    async def rows(batch: dict[str, Any]) -> None:
        stored.update(batch)

    strategies = CacheStrategies(
        MemoryCache(), queue=RedisWriteQueue(redis_url, name="crash"), lease=1.0, poll_interval=0.05
    )
    strategies.register_writer("rows", rows)
    async with strategies:
        assert await strategies.pending() == count
        await wait_for(lambda: len(stored) == count)
        assert await strategies.pending() == 0
    assert stored == {f"k{i}": {"n": i} for i in range(count)}


async def test_writes_not_stored_on_stop_stay_in_redis_for_the_next_start(redis_url: ServiceURL) -> None:
    stored: dict[str, Any] = {}
    healthy = False

    async def rows(batch: dict[str, Any]) -> None:
        if not healthy:
            raise ConnectionError("database down")
        stored.update(batch)

    def make() -> CacheStrategies:
        strategies = CacheStrategies(
            MemoryCache(), queue=RedisWriteQueue(redis_url, name="stop"), delay=60, poll_interval=0.05
        )
        strategies.register_writer("rows", rows)
        return strategies

    async with make() as first:
        await first.write_behind("a", 1, "rows")
        await first.write_behind("b", [1, 2], "rows")
    assert stored == {}
    healthy = True
    async with make() as second:
        await wait_for(lambda: len(stored) == 2)
        assert await second.pending() == 0
    assert stored == {"a": 1, "b": [1, 2]}


async def test_a_value_replaced_during_its_store_is_stored_again(redis_url: ServiceURL) -> None:
    queue = RedisWriteQueue(redis_url, name="replace")
    await queue.open()
    try:
        await queue.put("w", "k", 1, due=0)
        await queue.put("w", "k", 2, due=50)  # same key: the value is replaced, the due time kept
        [claimed] = await queue.claim(10, 10, hide_until=40)
        assert claimed.value == 2
        await queue.put("w", "k", 3, due=5)
        await queue.ack([claimed])
        assert await queue.pending() == 1
        [again] = await queue.claim(10, 10, hide_until=40)
        assert again.value == 3
        await queue.ack([again])
        assert await queue.pending() == 0
        assert await queue.next_due() is None
    finally:
        await queue.close()


async def test_a_claimed_write_reappears_when_its_lease_ends(redis_url: ServiceURL) -> None:
    queue = RedisWriteQueue(redis_url, name="lease")
    await queue.open()
    try:
        await queue.put("w", "k", {"x": 1}, due=0)
        assert len(await queue.claim(10, 10, hide_until=40)) == 1
        assert await queue.claim(39, 10, hide_until=80) == []
        assert [w.value for w in await queue.claim(40, 10, hide_until=80)] == [{"x": 1}]
    finally:
        await queue.close()


async def test_start_fails_with_a_clear_error_when_redis_is_unreachable() -> None:
    strategies = CacheStrategies(MemoryCache(), queue=RedisWriteQueue("redis://127.0.0.1:1/0", timeout=0.5))
    with pytest.raises(CacheBackendError, match="write-behind queue in Redis failed"):
        await strategies.start()


async def test_a_value_the_queue_cannot_encode_is_refused_and_not_cached(redis_url: ServiceURL) -> None:
    cache = MemoryCache()
    strategies = CacheStrategies(cache, queue=RedisWriteQueue(redis_url, name="enc"))
    strategies.register_writer("rows", lambda batch: asyncio.sleep(0))
    async with strategies:
        with pytest.raises(ValidationError, match="cannot be encoded with the queue's json codec"):
            await strategies.write_behind("k", {1, 2}, "rows")
        assert not await cache.exists("k")
        assert await strategies.pending() == 0


def test_a_queue_name_with_a_colon_is_refused() -> None:
    with pytest.raises(ValidationError, match="no ':'"):
        RedisWriteQueue("redis://localhost", name="a:b")
