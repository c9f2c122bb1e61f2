"""The public contracts of a cache: :class:`Cache` (async), :class:`SyncCache` and :class:`SupportsSync`.

They live apart from :mod:`mainspring.cache.base` so that the decorators and the factory can name them
without pulling in the shared implementation; ``base`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from mainspring.cache._stats import CacheHealth, CacheStats

__all__ = ["Cache", "SupportsSync", "SyncCache"]

T = TypeVar("T")


@runtime_checkable
class Cache(Protocol):
    """What every cache offers (``MemoryCache``, and the Redis and multi-level caches), all async.

    Values are whatever the cache's codec can encode (``Any``: the codec, not the type system, decides),
    ``None`` included: a cached ``None`` is a hit, distinct from a miss. Keys and tags are non-empty
    strings. ``ttl`` is in seconds; ``None`` means the cache's default. Read failures of the backend
    degrade to misses and write failures to no-ops (logged and counted); see ``docs/cache.md``.
    """

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default`` on a miss."""
        ...

    async def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds, attached to ``tags``."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; say whether it was there."""
        ...

    async def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value (a cached ``None`` counts)."""
        ...

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return the fresh values of ``keys`` that are cached; misses are absent from the result."""
        ...

    async def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping`` for ``ttl`` seconds, attached to ``tags``."""
        ...

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many were there."""
        ...

    async def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key`` (starting at 0) atomically; return the new value."""
        ...

    async def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` a new ttl of ``ttl`` seconds from now; ``False`` if it is not cached."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh: ``math.inf`` without expiry, ``None`` if not cached."""
        ...

    async def clear(self, prefix: str = "") -> int:
        """Remove every entry whose key starts with ``prefix`` (all of this cache's with ``""``)."""
        ...

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry attached to any of ``tags``, in O(1) per tag, on every instance."""
        ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        negative_ttl: float | None = None,
        cache_none: bool = True,
        stale_ttl: float | None = None,
        loader_timeout: float | None = None,
        lock: bool = False,
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        xfetch_beta: float | None = None,
        refresh_ahead: float | None = None,
    ) -> T:
        """Return the cached value of ``key``, or load it once (whatever the concurrency) and cache it."""
        ...

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        ...

    async def health(self) -> CacheHealth:
        """Check the backend with one round trip."""
        ...

    async def start(self) -> None:
        """Open the backend's resources."""
        ...

    async def stop(self) -> None:
        """Wait for background work, then release the backend's resources."""
        ...


class SyncCache(Protocol):
    """The synchronous surface of a cache, for synchronous code (``@cached`` on a plain function).

    Same meaning as :class:`Cache`. ``get_or_set`` has a per-key single flight across threads; a sync
    loader cannot be interrupted, so there is no loader timeout here.
    """

    def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default`` on a miss."""
        ...

    def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` under ``key``."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; say whether it was there."""
        ...

    def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value."""
        ...

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return the fresh values of ``keys`` that are cached."""
        ...

    def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping``."""
        ...

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many were there."""
        ...

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key``; return the new value."""
        ...

    def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` a new ttl."""
        ...

    def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh (``math.inf``: no expiry; ``None``: not cached)."""
        ...

    def clear(self, prefix: str = "") -> int:
        """Remove every entry whose key starts with ``prefix``."""
        ...

    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry attached to any of ``tags``."""
        ...

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
        """Return the cached value of ``key``, or call ``loader`` once per key at a time and cache it."""
        ...


@runtime_checkable
class SupportsSync(Protocol):
    """A cache that also offers a synchronous surface through its ``sync`` property."""

    @property
    def sync(self) -> SyncCache:
        """The synchronous surface of this cache."""
        ...
