"""Warming and reloading: fill a cache before traffic arrives, and keep chosen keys fresh forever.

::

    warmer = CacheWarmer(cache, interval=600)
    warmer.register("config:flags", load_flags, ttl=900)
    warmer.register_bulk("top-products", load_top_products, ttl=900)  # returns {key: value}

    reloader = CacheReloader(cache)
    reloader.register("rates:eur", load_eur_rates, ttl=60)  # reloaded ~every 48 s, never expires

    async with warmer, reloader:
        ...

Both are lifecycle components: nothing runs before ``start()``; each owns one named background task,
cancelled and awaited by ``stop()``. A failing loader is logged, counted in ``stats()`` (with the last
error) and retried; it never stops the others.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mainspring._lifecycle import AsyncLifecycle
from mainspring.cache._protocols import Cache
from mainspring.errors import ValidationError
from mainspring.logging import get_logger

__all__ = ["CacheReloader", "CacheWarmer", "WarmingStats"]

log = get_logger("mainspring.cache")

Loader = Callable[[], Awaitable[Any]]
BulkLoader = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class WarmingStats:
    """What a warmer or reloader did since it was made."""

    runs: int
    loaded: int
    failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    loader: Callable[[], Awaitable[Mapping[str, Any]]]
    ttl: float | None
    tags: tuple[str, ...]


def _optional_seconds(name: str, value: float | None) -> float | None:
    return None if value is None else _seconds(name, value)


def _seconds(name: str, value: float) -> float:
    if not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    ):
        raise ValidationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _fraction(name: str, value: float, high: float) -> float:
    if not (isinstance(value, int | float) and 0 <= value < high):
        raise ValidationError(f"{name} must be a number in [0, {high:g}), got {value!r}")
    return float(value)


class _Component(AsyncLifecycle):
    """Start/stop, one owned background task, and the counters both components share."""

    _task_name = "mainspring.cache:component"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._runs = self._loaded = self._failures = 0
        self._last_error: str | None = None

    def stats(self) -> WarmingStats:
        """Return the counters (and the last error, if any)."""
        return WarmingStats(self._runs, self._loaded, self._failures, self._last_error)

    def _failed(self, what: str, exc: Exception) -> None:
        self._failures += 1
        self._last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("cache loader failed", component=type(self).__name__, job=what, error=f"{exc!r}"[:500])

    async def _loop(self) -> None:
        raise NotImplementedError

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._task_name)
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The loop catches loader errors itself; reaching here is a bug, so say it loudly.
            self._last_error = repr(task.exception())
            log.error("cache background task died", task=task.get_name(), error=self._last_error)

    @property
    def running(self) -> bool:
        """Say whether the background task is alive."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def start(self) -> None:
        """Start the component."""
        raise NotImplementedError


class CacheWarmer(_Component):
    """Fill ``cache`` from registered loaders at start, then every ``interval`` seconds (if given).

    ``concurrency`` loaders run at a time; each periodic run starts after ``interval`` seconds give or
    take ``jitter`` (a fraction), so replicas do not warm in lockstep. A failed loader is logged and
    counted; the warm goes on with the others.
    """

    _task_name = "mainspring.cache:warmer"

    def __init__(
        self, cache: Cache, *, interval: float | None = None, concurrency: int = 4, jitter: float = 0.1
    ) -> None:
        """Configure the warmer; nothing runs before :meth:`start`."""
        super().__init__()
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self._cache = cache
        self._interval = _optional_seconds("interval", interval)
        self._concurrency = concurrency
        self._jitter = _fraction("jitter", jitter, 1.0)
        self._jobs: dict[str, _Job] = {}

    def register(
        self, key: str, loader: Loader, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Warm ``key`` with ``await loader()``."""

        async def one() -> Mapping[str, Any]:
            return {key: await loader()}

        self._add(_Job(key, one, _optional_seconds("ttl", ttl), tuple(tags)))

    def register_bulk(
        self, name: str, loader: BulkLoader, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Warm every key of the mapping ``await loader()`` returns (``name`` identifies the job)."""
        self._add(_Job(name, loader, _optional_seconds("ttl", ttl), tuple(tags)))

    def _add(self, job: _Job) -> None:
        if job.name in self._jobs:
            raise ValidationError(f"a warm-up job named {job.name!r} is registered already")
        self._jobs[job.name] = job

    async def warm(self) -> int:
        """Run every loader once now (``concurrency`` at a time); return how many keys were cached."""
        self._runs += 1
        gate = asyncio.Semaphore(self._concurrency)

        async def run(job: _Job) -> int:
            async with gate:
                try:
                    values = await job.loader()
                    await self._cache.set_many(values, ttl=job.ttl, tags=job.tags)
                except Exception as exc:  # noqa: BLE001 - user loaders: logged, counted, the others go on
                    self._failed(job.name, exc)
                    return 0
                return len(values)

        loaded = sum(await asyncio.gather(*(run(job) for job in self._jobs.values())))
        self._loaded += loaded
        return loaded

    async def start(self) -> None:
        """Warm once (failures are logged, not raised), then start the periodic warming if configured."""
        if self._task is not None:
            return
        await self.warm()
        if self._interval is not None:
            self._spawn()

    async def _loop(self) -> None:
        assert self._interval is not None
        while True:
            await asyncio.sleep(self._interval * random.uniform(1 - self._jitter, 1 + self._jitter))
            await self.warm()


class CacheReloader(_Component):
    """Keep registered keys in ``cache`` fresh: each is reloaded before its ``ttl`` runs out.

    A key is loaded at start, then again after ``ttl * (1 - refresh_before)`` seconds, minus up to
    ``jitter`` of that (so replicas and keys spread out). A failed reload is retried after ``retry``
    seconds, doubling, while the cached value lives; the last good value stays until it expires.
    """

    _task_name = "mainspring.cache:reloader"

    def __init__(
        self,
        cache: Cache,
        *,
        refresh_before: float = 0.2,
        jitter: float = 0.1,
        retry: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure the reloader; nothing runs before :meth:`start`."""
        super().__init__()
        self._cache = cache
        self._refresh_before = _fraction("refresh_before", refresh_before, 1.0)
        self._jitter = _fraction("jitter", jitter, 1.0)
        self._retry = _seconds("retry", retry)
        self._clock = clock
        self._keys: dict[str, tuple[Loader, float, tuple[str, ...]]] = {}
        self._attempts: dict[str, int] = {}
        self._due: list[tuple[float, int, str]] = []
        self._next: dict[str, float] = {}
        self._order = itertools.count()
        self._wake: asyncio.Event | None = None

    def register(self, key: str, loader: Loader, *, ttl: float, tags: Iterable[str] = ()) -> None:
        """Keep ``key`` loaded by ``await loader()`` with ``ttl`` (at once if the reloader runs)."""
        if key in self._keys:
            raise ValidationError(f"the key {key!r} is registered already")
        self._keys[key] = (loader, _seconds("ttl", ttl), tuple(tags))
        self._schedule(key, self._clock())
        if self._wake is not None:
            self._wake.set()

    def unregister(self, key: str) -> None:
        """Stop reloading ``key`` (its cached value stays until it expires)."""
        self._keys.pop(key, None)
        self._attempts.pop(key, None)
        self._next.pop(key, None)

    def _schedule(self, key: str, at: float) -> None:
        # The heap may hold older entries of the key; only the one matching _next[key] counts.
        self._next[key] = at
        heapq.heappush(self._due, (at, next(self._order), key))

    async def reload(self, key: str) -> bool:
        """Load ``key`` now and cache it; schedule the next reload; return whether the load worked."""
        registered = self._keys.get(key)
        if registered is None:
            return False
        loader, ttl, tags = registered
        self._runs += 1
        try:
            value = await loader()
            await self._cache.set(key, value, ttl=ttl, tags=tags)
        except Exception as exc:  # noqa: BLE001 - user loaders: logged, counted, retried
            self._failed(key, exc)
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            self._schedule(key, self._clock() + min(ttl, self._retry * 2 ** (attempt - 1)))
            return False
        self._loaded += 1
        self._attempts.pop(key, None)
        lead = ttl * (1 - self._refresh_before)
        self._schedule(key, self._clock() + lead * (1 - random.uniform(0, self._jitter)))
        return True

    async def start(self) -> None:
        """Load every registered key now (failures logged and retried), then keep them fresh."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._due.clear()
        await asyncio.gather(*(self.reload(key) for key in list(self._keys)))
        self._spawn()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            now = self._clock()
            while self._due and self._due[0][0] <= now:
                at, _n, key = heapq.heappop(self._due)
                if key in self._keys and self._next.get(key) == at:
                    await self.reload(key)
            wait = self._due[0][0] - self._clock() if self._due else None
            self._wake.clear()
            try:
                async with asyncio.timeout(None if wait is None else max(wait, 0.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass
