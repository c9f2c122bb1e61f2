"""RedisCache against a real Redis: the factory, faults (killed connections, a frozen server, a dead
port), the circuit breaker, entries written from outside, the lease and SyncRedisCache."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from mainspring.cache import CacheBackendError, RedisCache, SyncRedisCache, create_cache
from mainspring.errors import ConflictError
from mainspring.testing import ServiceURL, capture_logs


class FreezableProxy:
    """A TCP proxy in front of Redis that can stop forwarding: Redis as seen by one cache goes slow.

    Unlike DEBUG SLEEP or CLIENT PAUSE it freezes only the connections of the cache under test, so
    tests running in parallel against the same server are not disturbed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


def _db(url: str) -> int:
    return int(urlsplit(url).path.strip("/") or 0)


@pytest.fixture
async def proxy(redis_url: ServiceURL) -> AsyncIterator[FreezableProxy]:
    parts = urlsplit(redis_url)
    made = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await made.start()
    yield made
    made.flowing.set()
    await made.stop()


def _through(proxy: FreezableProxy, redis_url: str) -> str:
    return f"redis://127.0.0.1:{proxy.port}/{_db(redis_url)}"


# --- the factory --------------------------------------------------------------------------------------


async def test_create_cache_builds_a_redis_cache_with_options_from_the_query(redis_url: ServiceURL) -> None:
    cache = create_cache(f"{redis_url}?namespace=svc&redis_timeout=0.5&redis_breaker_failures=2")
    assert isinstance(cache, RedisCache)
    assert (cache.keys.namespace, cache._timeout, cache.breaker.failures) == ("svc", 0.5, 2)
    async with cache:
        await cache.set("k", {"a": 1})
        assert await cache.get("k") == {"a": 1}
        raw = aioredis.from_url(redis_url)
        assert await raw.exists("svc:v1:k") == 1, "keys carry the namespace and schema version"
        await raw.aclose()
        assert (await cache.health()).healthy


# --- faults -------------------------------------------------------------------------------------------


async def test_killed_connections_are_replaced_and_calls_keep_working(redis_url: ServiceURL) -> None:
    cache = RedisCache(redis_url, timeout=1.0)
    admin = redis.Redis.from_url(redis_url)
    failures: list[BaseException] = []

    async def worker(n: int) -> None:
        for i in range(60):
            try:
                await cache.set(f"k{n}", i)
                await cache.get(f"k{n}")
            except Exception as exc:  # noqa: BLE001 - the test collects what should never happen
                failures.append(exc)
            await asyncio.sleep(0.002)

    def kill_ours() -> int:
        ids = [
            c["id"]
            for c in admin.client_list()
            if c.get("name") == "mainspring-cache" and int(c["db"]) == _db(redis_url)
        ]
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
        return len(ids)

    async with cache:
        workers = [asyncio.create_task(worker(n)) for n in range(8)]
        await asyncio.sleep(0.05)
        killed = await asyncio.to_thread(kill_ours)
        await asyncio.sleep(0.05)
        killed += await asyncio.to_thread(kill_ours)
        await asyncio.gather(*workers)
        assert killed > 0
        assert failures == []
        # Killed connections may have opened the breaker (calls degrade to misses meanwhile); recovery
        # is automatic once its cooldown has passed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            await cache.set("after", "ok")
            if await cache.get("after") == "ok":
                break
            assert loop.time() < deadline, "the cache did not recover by itself"
            await asyncio.sleep(0.2)
    admin.close()


async def test_a_frozen_redis_gives_misses_within_the_timeout_then_recovers(
    redis_url: ServiceURL, proxy: FreezableProxy
) -> None:
    cache = RedisCache(_through(proxy, redis_url), timeout=0.2, breaker_failures=3, breaker_cooldown=0.3)
    async with cache:
        await cache.set("k", "v")
        proxy.flowing.clear()
        with capture_logs() as logs:
            started = time.perf_counter()
            results = await asyncio.gather(*(cache.get("k", "miss") for _ in range(20)))
            elapsed = time.perf_counter() - started
            await cache.set("other", 1)  # a no-op, no exception
            assert await cache.get_or_set("x", _const("loaded")) == "loaded"
        assert results == ["miss"] * 20
        assert elapsed < 1.0, "every caller got its miss within about the 0.2 s timeout"
        assert cache.stats().errors >= 20
        assert cache.breaker.state == "open"
        assert any(r["event"] == "cache backend failing; circuit opened" for r in logs)
        # While the circuit is open, calls do not even wait for the timeout.
        started = time.perf_counter()
        assert await cache.get("k", "miss") == "miss"
        assert time.perf_counter() - started < 0.1
        health = await cache.health()
        assert not health.healthy
        assert "circuit is open" in health.detail

        proxy.flowing.set()
        await asyncio.sleep(0.35)  # the cooldown: the next call is the probe
        assert await cache.get("k") == "v"
        assert cache.breaker.state == "closed"
        assert (await cache.health()).healthy


async def test_the_breaker_recovers_after_a_failed_probe(
    redis_url: ServiceURL, proxy: FreezableProxy
) -> None:
    cache = RedisCache(_through(proxy, redis_url), timeout=0.1, breaker_failures=2, breaker_cooldown=0.2)
    async with cache:
        await cache.set("k", "v")
        proxy.flowing.clear()
        for _ in range(2):
            assert await cache.get("k") is None
        assert cache.breaker.state == "open"
        await asyncio.sleep(0.25)
        assert await cache.get("k") is None, "the probe fails: still frozen"
        assert cache.breaker.state == "open"
        assert cache.breaker.opened == 2
        proxy.flowing.set()
        await asyncio.sleep(0.25)
        assert await cache.get("k") == "v"
        assert cache.breaker.state == "closed"


async def test_an_unreachable_redis_degrades_from_the_start() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2, breaker_failures=2)
    with capture_logs() as logs:
        async with cache:  # start() does not raise
            assert await cache.get("k", "default") == "default"
            await cache.set("k", "v")
            assert await cache.get_or_set("k", _const(7)) == 7
            assert await cache.delete("k") is False
            with pytest.raises(CacheBackendError) as raised:
                await cache.incr("n")
            assert "127.0.0.1:1" in raised.value.message
            assert not (await cache.health()).healthy
    assert any(r["event"] == "redis cache unreachable at start; degrading until it answers" for r in logs)
    assert cache.stats().errors >= 3


async def test_a_password_in_the_url_never_reaches_errors_or_logs() -> None:
    cache = RedisCache("redis://user:s3cret-pw@127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2)
    with capture_logs() as logs:
        async with cache:
            with pytest.raises(CacheBackendError) as raised:
                await cache.incr("k")
    assert "s3cret-pw" not in raised.value.message
    assert "s3cret-pw" not in repr(logs)
    assert "s3cret-pw" not in repr(cache)


# --- entries and counters -----------------------------------------------------------------------------


async def test_an_entry_written_by_someone_else_that_cannot_be_decoded_is_a_counted_miss(
    redis_url: ServiceURL,
) -> None:
    raw = aioredis.from_url(redis_url)
    async with RedisCache(redis_url) as cache:
        await raw.set("mainspring:v1:bad", b"\x9a\x10not a frame")
        await raw.set("mainspring:v1:word", b"hello")  # an ASCII value that is not a number
        assert await cache.get("bad", "miss") == "miss"
        assert await cache.get("word", "miss") == "miss"
        assert cache.stats().undecodable == 2
        assert await raw.exists("mainspring:v1:bad") == 1, "left for a newer deploy that may read it"
        with pytest.raises(ConflictError):
            await cache.incr("bad")
    await raw.aclose()


async def test_counters_are_redis_counters_and_keep_their_ttl(redis_url: ServiceURL) -> None:
    raw = aioredis.from_url(redis_url)
    async with RedisCache(redis_url) as cache:
        assert await cache.incr("hits", 5) == 5
        assert await raw.get("mainspring:v1:hits") == b"5"
        assert await cache.expire("hits", 30)
        assert await cache.incr("hits") == 6
        ttl = await cache.ttl("hits")
        assert ttl is not None
        assert 29 < ttl <= 30
        await raw.set("mainspring:v1:big", str(2**63 - 1))
        with pytest.raises(ConflictError, match="64-bit"):
            await cache.incr("big")
    await raw.aclose()


async def test_clear_scans_only_the_prefix_and_escapes_glob_characters(redis_url: ServiceURL) -> None:
    raw = aioredis.from_url(redis_url)
    async with RedisCache(redis_url) as cache:
        await cache.set_many({f"user:{i}": i for i in range(1200)})
        await cache.set_many({"a*b:1": 1, "a*b:2": 2, "axb:1": 3, "other": 4})
        await cache.invalidate_tags("t")
        assert await cache.clear("a*b:") == 2
        assert await cache.get("axb:1") == 3
        assert await cache.clear("user:") == 1200
        assert await cache.get("other") == 4
        assert await raw.exists("mainspring:__tag__:t") == 1, "tags are not entries"
    await raw.aclose()


async def test_a_lease_is_released_only_by_its_holder(redis_url: ServiceURL) -> None:
    raw = aioredis.from_url(redis_url)
    async with RedisCache(redis_url) as cache:
        lease = cache.keys.lease("k")
        async with cache._lease("k", ttl=5, wait=0) as held:
            assert held
            assert await raw.pttl(lease) > 4000
            async with cache._lease("k", ttl=5, wait=0.05) as other:
                assert not other, "taken: the wait runs out"
            assert await raw.exists(lease) == 1, "the waiter did not release the holder's lease"
        assert await raw.exists(lease) == 0
    await raw.aclose()


async def test_stop_closes_the_connections(redis_url: ServiceURL) -> None:
    admin = redis.Redis.from_url(redis_url)

    def ours() -> int:
        return sum(
            1
            for c in admin.client_list()
            if c.get("name") == "mainspring-cache" and int(c["db"]) == _db(redis_url)
        )

    cache = RedisCache(redis_url)
    await cache.start()
    await asyncio.gather(*(cache.get(f"k{i}") for i in range(10)))
    assert await asyncio.to_thread(ours) > 0
    await cache.stop()
    await asyncio.sleep(0.05)
    assert await asyncio.to_thread(ours) == 0
    admin.close()


# --- SyncRedisCache -----------------------------------------------------------------------------------


def test_sync_redis_cache_round_trips_and_shares_entries_with_the_async_cache(redis_url: ServiceURL) -> None:
    with SyncRedisCache(redis_url, namespace="shared") as cache:
        assert cache.sync is cache
        assert cache.get("missing", "d") == "d"
        cache.set("user:1", {"name": "Ada"}, ttl=60, tags=["users"])
        cache.set("none", None)
        assert cache.get("user:1") == {"name": "Ada"}
        assert cache.get("none", "d") is None, "a cached None is a hit"
        cache.set_many({"a": 1, "b": [1, 2]})
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": [1, 2]}
        assert cache.exists("a")
        assert not cache.exists("c")
        assert cache.incr("n", 2) == 2
        assert cache.incr("n") == 3
        assert cache.expire("n", 100)
        ttl = cache.ttl("n")
        assert ttl is not None
        assert 99 < ttl <= 100
        assert cache.ttl("user:1") == pytest.approx(60, abs=1)
        assert cache.ttl("missing") is None
        with pytest.raises(ConflictError):
            cache.incr("b")

        async def read_with_the_async_cache() -> tuple[Any, Any]:
            async with RedisCache(redis_url, namespace="shared") as other:
                before = await other.get("user:1")
                await other.invalidate_tags("users")
                return before, await other.get("n")

        before, counter = asyncio.run(read_with_the_async_cache())
        assert (before, counter) == ({"name": "Ada"}, 3)
        assert cache.get("user:1") is None, "the tag was invalidated by the async cache"
        assert cache.delete("a")
        assert not cache.delete("a")
        assert cache.delete_many(["b", "none", "zzz"]) == 2
        assert cache.clear() >= 1
        assert cache.get("n") is None
        assert cache.health().healthy
        assert cache.stats().hits == 4


def test_sync_get_or_set_runs_one_loader_across_threads(redis_url: ServiceURL) -> None:
    calls = 0
    gate = threading.Barrier(16)

    def loader() -> str:
        nonlocal calls
        calls += 1
        time.sleep(0.1)
        return "value"

    results: list[str] = []
    with SyncRedisCache(redis_url, timeout=1.0) as cache:

        def call() -> None:
            gate.wait()
            results.append(cache.get_or_set("k", loader, ttl=30))

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["value"] * 16
        assert calls == 1
        assert cache.get("k") == "value"


def test_sync_redis_cache_degrades_when_redis_is_unreachable() -> None:
    with (
        capture_logs(),
        SyncRedisCache(
            "redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2, breaker_failures=1
        ) as cache,
    ):
        assert cache.get("k", "d") == "d"
        cache.set("k", "v")
        assert cache.get_or_set("k", lambda: 5) == 5
        assert cache.breaker.state == "open"
        with pytest.raises(CacheBackendError, match="circuit is open"):
            cache.incr("n")
        assert not cache.health().healthy
    assert cache.stats().errors >= 3


def _const(value: Any) -> Any:
    async def load() -> Any:
        return value

    return load


def test_ms_rounding_never_reaches_zero() -> None:
    from mainspring.cache._redis_client import ms, seconds_left

    assert ms(0.0001) == 1
    assert ms(1.5) == 1500
    assert seconds_left(-2) is None
    assert seconds_left(-1) == math.inf
    assert seconds_left(1500) == 1.5
