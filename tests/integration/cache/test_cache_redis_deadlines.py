"""RedisCache's call deadlines and read coalescing against a real Redis (frozen through a proxy):
a slow call becomes a miss, a cancelled caller stays cancelled, readers of one key share one GET."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from mainspring.cache import RedisCache
from mainspring.cache._redis_client import Deadlines
from mainspring.testing import ServiceURL, capture_logs


class Gate:
    """A TCP proxy in front of Redis whose replies wait while the gate is shut: a slow Redis for one
    cache only (other tests share the server)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{parts.path}"

    async def stop(self) -> None:
        self.open.set()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        pipes = [asyncio.create_task(self._pipe(a, b)) for a, b in ((reader, up_writer), (up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.open.wait()
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    made = Gate()
    yield made
    await made.stop()


def _count_gets(cache: RedisCache) -> list[int]:
    client = cache._client
    get = client.get
    counter = [0]

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return get(*args, **kwargs)

    client.get = counting_get
    return counter


async def test_concurrent_reads_of_one_key_share_one_get(redis_url: ServiceURL) -> None:
    async with RedisCache(redis_url) as cache:
        await cache.set("hot", {"n": 1})
        gets = _count_gets(cache)
        results = await asyncio.gather(*(cache.get("hot") for _ in range(50)))
        assert results == [{"n": 1}] * 50
        assert gets[0] == 1
        assert cache._reads == {}, "no read is left registered"
        assert await cache.get("hot") == {"n": 1}
        assert gets[0] == 2, "a later read sends its own GET"


async def test_a_write_during_a_read_makes_later_readers_send_their_own_get(
    redis_url: ServiceURL, gate: Gate
) -> None:
    async with RedisCache(await gate.start(redis_url), timeout=5.0) as cache:
        await cache.set("k", "old")
        gets = _count_gets(cache)
        gate.open.clear()
        first = asyncio.create_task(cache.get("k"))
        await asyncio.sleep(0.05)
        writing = asyncio.create_task(cache.set("k", "new"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(cache.get("k"))
        await asyncio.sleep(0.05)
        gate.open.set()
        await writing
        # Which of the three reaches Redis first is up to the proxy's connections; what matters is
        # that the read after the write did not join the read from before it.
        assert await first in ("old", "new")
        assert await second in ("old", "new")
        assert gets[0] == 2
        assert await cache.get("k") == "new"


async def test_a_reader_whose_leader_was_cancelled_reads_by_itself(redis_url: ServiceURL, gate: Gate) -> None:
    async with RedisCache(await gate.start(redis_url), timeout=5.0) as cache:
        await cache.set("k", "v")
        gets = _count_gets(cache)
        gate.open.clear()
        leader = asyncio.create_task(cache.get("k"))
        await asyncio.sleep(0.05)
        joiner = asyncio.create_task(cache.get("k"))
        await asyncio.sleep(0.05)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        gate.open.set()
        assert await joiner == "v"
        assert gets[0] == 2
        assert cache.stats().errors == 0


async def test_a_call_slower_than_the_timeout_is_a_miss_and_leaves_the_task_uncancelled(
    redis_url: ServiceURL, gate: Gate
) -> None:
    async with RedisCache(await gate.start(redis_url), timeout=0.1, breaker_failures=10) as cache:
        await cache.set("k", "v")
        gate.open.clear()
        with capture_logs() as logs:
            assert await cache.get("k", "miss") == "miss"
            assert await cache.get("k", "miss") == "miss", "the second call waits for its own deadline"
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await asyncio.sleep(0)  # no cancellation left pending on this task
        assert cache.stats().errors == 2
        assert [r["error"] for r in logs if r["event"] == "cache backend failed; degraded"] == [
            f"redis cache at {cache.url}: get failed (timed out after 0.1 s)"
        ] * 2
        assert cache.breaker.state == "closed"
        gate.open.set()
        assert await cache.get("k") == "v"


async def test_a_caller_cancelled_while_redis_hangs_is_cancelled_not_degraded(
    redis_url: ServiceURL, gate: Gate
) -> None:
    async with RedisCache(await gate.start(redis_url), timeout=0.2) as cache:
        await cache.set("k", "v")
        gate.open.clear()
        reader = asyncio.create_task(cache.get("k"))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await asyncio.sleep(0.3)  # past the deadline the cancelled call had: nothing fires late
        assert cache.stats().errors == 0
        assert cache.breaker.quiet
        gate.open.set()
        assert await cache.get("k") == "v"


async def test_a_deadline_does_not_swallow_a_cancellation_that_came_with_it() -> None:
    deadlines = Deadlines(0.05)
    outcome: dict[str, str] = {}

    async def call(name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        slot = deadlines.join(task)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome[name] = "timed out" if slot.leave(task, cancelling) else "cancelled"
            raise

    alone = asyncio.create_task(call("alone"))
    both = asyncio.create_task(call("both"))
    await asyncio.sleep(0)  # both calls joined their deadline and wait
    loop = asyncio.get_running_loop()
    # Someone else cancels `both` after the deadline's timer fired, before the task got to run:
    # the loop is blocked past both moments, so both timers run in one go, in order.
    loop.call_at(loop.time() + 0.09, both.cancel)
    time.sleep(0.12)  # noqa: ASYNC251 - blocking the loop on purpose, see above
    results = await asyncio.gather(alone, both, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert outcome == {"alone": "timed out", "both": "cancelled"}
