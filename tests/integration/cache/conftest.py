"""Fixtures of the cache contract suite: one cache per backend, driven by a controllable clock.

To add a backend, add a param to ``BACKENDS`` (``pytest.param("redis", marks=pytest.mark.integration)``)
and a branch in ``make_cache`` that builds it with the given options (the test kit's ``redis_url``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from mainspring.cache import BaseCache, MemoryCache, MultiLevelCache, RedisCache
from mainspring.cache._coherence import RedisInvalidation

BACKENDS = [
    pytest.param("memory", id="memory"),
    # The same store, but every value goes through the codec and the frame, as on Redis.
    pytest.param("memory-bytes", id="memory-bytes"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
    # L1 memory over L2 Redis, with the pub/sub invalidation channel.
    pytest.param("multilevel", id="multilevel", marks=pytest.mark.integration),
]


class FakeClock:
    """A clock the test moves by hand: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock, shared by every cache a test makes."""
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
async def make_cache(
    backend: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """Build started caches of the backend under test with extra options; all stopped after the test."""
    made: list[BaseCache[Any]] = []
    # Only the redis backend asks for the test kit's isolated database (so memory runs need no server).
    redis_url = str(request.getfixturevalue("redis_url")) if backend in ("redis", "multilevel") else ""

    async def make(**options: Any) -> BaseCache[Any]:
        options.setdefault("clock", clock)
        if backend == "memory":
            cache: BaseCache[Any] = MemoryCache(**options)
        elif backend == "memory-bytes":
            cache = MemoryCache(store="bytes", **options)
        elif backend == "redis":
            # A generous timeout: the suite checks semantics, not degradation (a loaded CI box is slow).
            options.setdefault("timeout", 2.0)
            cache = RedisCache(redis_url, **options)
        elif backend == "multilevel":
            l1 = MemoryCache(clock=clock, namespace=options.get("namespace", "mainspring"))
            l2 = RedisCache(redis_url, **{"timeout": 2.0, **options})
            channel = RedisInvalidation(redis_url, namespace=l2.keys.namespace)
            # Duck-typed: the suite uses the Cache surface, ``keys`` and ``_set_raw``, which it has.
            cache = cast("BaseCache[Any]", MultiLevelCache(l1, l2, invalidation=channel))
        else:  # pragma: no cover - a backend listed above without a branch here
            raise AssertionError(f"no cache for backend {backend!r}")
        await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.stop()


@pytest.fixture
async def cache(make_cache: Callable[..., Any]) -> BaseCache[Any]:
    """A started cache of the backend under test with the default options and the fake clock."""
    made: BaseCache[Any] = await make_cache()
    return made
