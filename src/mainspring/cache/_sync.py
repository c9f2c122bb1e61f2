"""The synchronous surface of a cache whose primitives never suspend (the in-memory cache).

Its async methods complete without ever waiting on anything, so a coroutine can be run to the end by
hand, in any thread, without an event loop. ``get_or_set`` gets its own single flight across threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mainspring.cache._loading import LoadSpec, check_seconds, fail_safe, seconds_or
from mainspring.cache._protocols import SyncCache
from mainspring.errors import InternalError

if TYPE_CHECKING:
    from mainspring.cache.base import BaseCache

__all__ = ["SyncView", "run_now"]

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end and return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise InternalError(
        "a cache operation suspended inside the synchronous surface; only caches whose storage never "
        "waits (MemoryCache) offer .sync this way - use SyncRedisCache for Redis"
    )


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SyncView:
    """The :class:`~mainspring.cache.SyncCache` surface of a cache whose storage never waits.

    Calls block the calling thread only for the work itself (and, in ``get_or_set``, for the loader
    of another thread loading the same key). Calling it from the event loop thread is allowed but
    blocks the loop while a loader runs. A loader must not ``get_or_set`` its own key (it would wait
    for itself).
    """

    def __init__(self, cache: BaseCache[Any]) -> None:
        """Wrap ``cache``."""
        self._cache = cache
        self._flights: dict[str, _Flight] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"SyncView({self._cache!r})"

    def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default``."""
        return run_now(self._cache.get(key, default))

    def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` under ``key``."""
        run_now(self._cache.set(key, value, ttl, tags))

    def delete(self, key: str) -> bool:
        """Remove ``key``; say whether it was there."""
        return run_now(self._cache.delete(key))

    def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value."""
        return run_now(self._cache.exists(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return the fresh values of ``keys`` that are cached."""
        return run_now(self._cache.get_many(keys))

    def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping``."""
        run_now(self._cache.set_many(mapping, ttl, tags))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many were there."""
        return run_now(self._cache.delete_many(keys))

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key``; return the new value."""
        return run_now(self._cache.incr(key, by))

    def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` a new ttl."""
        return run_now(self._cache.expire(key, ttl))

    def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh."""
        return run_now(self._cache.ttl(key))

    def clear(self, prefix: str = "") -> int:
        """Remove every entry whose key starts with ``prefix``."""
        return run_now(self._cache.clear(prefix))

    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry attached to any of ``tags``."""
        run_now(self._cache.invalidate_tags(*tags))

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        negative_ttl: float | None = None,
        cache_none: bool = True,
        stale_ttl: float | None = None,
    ) -> T:
        """Return the cached value of ``key``, or call ``loader`` (once per key across threads)."""
        cache = self._cache
        built = cache.keys.entry(key)
        spec = LoadSpec(
            key=key,
            ttl=check_seconds("ttl", ttl, optional=True),
            tags=cache._check_tags(tags),
            negative_ttl=check_seconds("negative_ttl", negative_ttl, optional=True),
            cache_none=cache_none,
            stale_ttl=seconds_or("stale_ttl", stale_ttl, cache._stale_ttl, zero=True),
            timeout=None,
            lock=False,
            lock_ttl=cache._lock_ttl,
            lock_wait=cache._lock_wait,
        )
        entry = run_now(cache._read_entries([built]))[0]
        now = cache._clock()
        if entry is not None and now < entry.fresh_until:
            cache._counters.hits += 1
            return cast(T, entry.value)
        cache._counters.misses += 1
        stale = entry if entry is not None and now < entry.fresh_until + entry.stale_ttl else None
        with self._guard:
            flight = self._flights.get(built)
            leader = flight is None
            if flight is None:
                flight = self._flights[built] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return cast(T, flight.value)
        try:
            flight.value = self._load(built, loader, spec, stale)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._guard:
                self._flights.pop(built, None)
            flight.done.set()
        return cast(T, flight.value)

    def _load(self, built: str, loader: Callable[[], Any], spec: LoadSpec, stale: Any) -> Any:
        cache = self._cache
        versions: Mapping[str, int] = {}
        if spec.tags:
            found = run_now(cache._tag_versions(spec.tags, create=True))
            versions = found if found is not None else {}
        cache._counters.loads += 1
        started = time.perf_counter()
        try:
            value = loader()
        except Exception as exc:  # noqa: BLE001 - the fail-safe re-raises it unless a stale value stands in
            cache._counters.load_errors += 1
            return fail_safe(spec, stale, exc, cache._clock(), cache._counters, repr(cache), timed_out=False)
        if value is None and not spec.cache_none:
            return None
        if spec.tags and not versions:
            return value
        entry, physical = cache._make_entry(
            value,
            spec.ttl,
            versions,
            negative_ttl=spec.negative_ttl,
            stale_ttl=spec.stale_ttl,
            delta=time.perf_counter() - started,
        )
        if run_now(cache._store([(built, cache._pack(entry))], physical)):
            cache._counters.sets += 1
        return value


# mypy checks here that SyncView implements the SyncCache protocol.
_IMPLEMENTS_SYNC_CACHE: Callable[[BaseCache[Any]], SyncCache] = SyncView
