"""CacheWarmer and CacheReloader over MemoryCache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mainspring.cache import MemoryCache
from mainspring.cache.warming import CacheReloader, CacheWarmer
from mainspring.errors import ValidationError
from mainspring.testing import capture_logs


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the condition is plain state, not an event
            await asyncio.sleep(0.005)


def tasks_named(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name]


class Counter:
    def __init__(self, fail: int = 0) -> None:
        self.calls = 0
        self.fail = fail

    async def __call__(self) -> int:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("source down")
        return self.calls


async def test_the_warmer_fills_the_cache_at_start() -> None:
    cache = MemoryCache()
    warmer = CacheWarmer(cache)
    warmer.register("flags", Counter(), ttl=60, tags=["config"])

    async def products() -> dict[str, Any]:
        return {"p:1": {"n": 1}, "p:2": {"n": 2}}

    warmer.register_bulk("products", products, ttl=60)
    assert not await cache.exists("flags")  # nothing before start
    async with warmer:
        assert await cache.get_many(["flags", "p:1", "p:2"]) == {"flags": 1, "p:1": {"n": 1}, "p:2": {"n": 2}}
        assert tasks_named("mainspring.cache:warmer") == []  # no interval: no background task
    assert warmer.stats().loaded == 3
    await cache.invalidate_tags("config")
    assert await cache.get("flags") is None


async def test_a_failing_loader_is_logged_and_counted_and_the_others_still_warm() -> None:
    cache = MemoryCache()
    warmer = CacheWarmer(cache)
    warmer.register("bad", Counter(fail=1))
    warmer.register("good", Counter())
    with capture_logs() as logs:
        async with warmer:
            assert await cache.get("good") == 1
    stats = warmer.stats()
    assert (stats.loaded, stats.failures) == (1, 1)
    assert stats.last_error == "bad: ConnectionError: source down"
    assert any(e["event"] == "cache loader failed" and e["job"] == "bad" for e in logs)


async def test_periodic_warming_runs_in_a_named_task_until_stop() -> None:
    cache = MemoryCache()
    loader = Counter()
    warmer = CacheWarmer(cache, interval=0.02)
    warmer.register("k", loader)
    async with warmer:
        assert len(tasks_named("mainspring.cache:warmer")) == 1
        await eventually(lambda: loader.calls >= 3)
        assert await cache.get("k") >= 2
    await asyncio.sleep(0)
    assert tasks_named("mainspring.cache:warmer") == []
    calls = loader.calls
    await asyncio.sleep(0.05)
    assert loader.calls == calls


async def test_concurrency_bounds_the_loaders_running_at_once() -> None:
    running = peak = 0

    async def slow() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1

    warmer = CacheWarmer(MemoryCache(), concurrency=2)
    for i in range(8):
        warmer.register(f"k{i}", slow)
    assert await warmer.warm() == 8
    assert peak == 2


def test_bad_warmer_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="interval"):
        CacheWarmer(MemoryCache(), interval=0)
    with pytest.raises(ValidationError, match="concurrency"):
        CacheWarmer(MemoryCache(), concurrency=0)
    with pytest.raises(ValidationError, match="jitter"):
        CacheWarmer(MemoryCache(), jitter=1.5)
    warmer = CacheWarmer(MemoryCache())
    warmer.register("k", Counter())
    with pytest.raises(ValidationError, match="registered already"):
        warmer.register("k", Counter())
    with pytest.raises(ValidationError, match="ttl"):
        warmer.register("other", Counter(), ttl=-1)


async def test_the_reloader_keeps_a_key_fresh_past_its_ttl() -> None:
    cache = MemoryCache()
    loader = Counter()
    reloader = CacheReloader(cache, refresh_before=0.5, jitter=0.2)
    reloader.register("rates", loader, ttl=0.1)
    async with reloader:
        assert await cache.get("rates") == 1
        assert len(tasks_named("mainspring.cache:reloader")) == 1
        misses = 0
        for _ in range(30):  # 0.3 s: three ttls
            if await cache.get("rates") is None:
                misses += 1
            await asyncio.sleep(0.01)
        assert misses == 0
        assert loader.calls >= 4
    await asyncio.sleep(0)
    assert tasks_named("mainspring.cache:reloader") == []


async def test_a_failed_reload_is_retried_and_counted_while_the_old_value_lives() -> None:
    cache = MemoryCache()
    flaky = Counter()
    reloader = CacheReloader(cache, refresh_before=0.5, jitter=0, retry=0.01)
    reloader.register("k", flaky, ttl=0.2)
    async with reloader:
        assert await cache.get("k") == 1
        flaky.fail = 2
        await eventually(lambda: flaky.calls >= 4)
        assert reloader.stats().failures == 2
        assert await cache.get("k") == 4
        assert reloader.stats().last_error == "k: ConnectionError: source down"


async def test_a_key_registered_while_running_loads_at_once_and_unregister_stops_it() -> None:
    cache = MemoryCache()
    loader = Counter()
    async with CacheReloader(cache, refresh_before=0.5) as reloader:
        reloader.register("late", loader, ttl=0.05)
        await eventually(lambda: loader.calls >= 2)
        reloader.unregister("late")
        calls = loader.calls
        await asyncio.sleep(0.1)
        assert loader.calls == calls


def test_bad_reloader_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="refresh_before"):
        CacheReloader(MemoryCache(), refresh_before=1)
    with pytest.raises(ValidationError, match="retry"):
        CacheReloader(MemoryCache(), retry=0)
    reloader = CacheReloader(MemoryCache())
    with pytest.raises(ValidationError, match="ttl"):
        reloader.register("k", Counter(), ttl=float("nan"))
