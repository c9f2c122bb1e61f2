"""Fixtures of the cache contract suite: one cache per backend, driven by a controllable clock.

To add a backend, add a param to ``BACKENDS`` (``pytest.param("redis", marks=pytest.mark.integration)``)
and a branch in ``make_cache`` that builds it with the given options (the test kit's ``redis_url``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mainspring.cache import BaseCache, MemoryCache

BACKENDS = [
    pytest.param("memory", id="memory"),
    # The same store, but every value goes through the codec and the frame, as on Redis.
    pytest.param("memory-bytes", id="memory-bytes"),
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
async def make_cache(backend: str, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Build started caches of the backend under test with extra options; all stopped after the test."""
    made: list[BaseCache[Any]] = []

    async def make(**options: Any) -> BaseCache[Any]:
        options.setdefault("clock", clock)
        if backend == "memory":
            cache: BaseCache[Any] = MemoryCache(**options)
        elif backend == "memory-bytes":
            cache = MemoryCache(store="bytes", **options)
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
