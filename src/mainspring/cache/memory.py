"""The in-process cache (``memory://``): bounded by entries and/or bytes, LRU or W-TinyLFU, lazy expiry.

No thread and no task: an expired entry is dropped when it is next read, and every write also checks a
few entries in rotation, so expired entries that are never read again do not pile up.

``store="object"`` (the default) keeps the Python objects themselves: a hit returns the very object
that was stored, so callers must not mutate it (copy it if you must). ``store="bytes"`` encodes every
value with the codec, as Redis would: hits return fresh copies and the byte bound is exact, at the
price of a decode per hit.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import islice
from typing import Any, ClassVar, Literal, TypeVar, cast

from typing_extensions import Unpack

from mainspring.cache._codec import Entry, is_plain_int
from mainspring.cache._errors import not_a_counter
from mainspring.cache._eviction import LruPolicy, Node, Policy, TinyLfuPolicy
from mainspring.cache._options import CacheOptions
from mainspring.cache._settings import cache_options
from mainspring.cache._sync import SyncView
from mainspring.cache.base import BaseCache
from mainspring.config._sections import CacheSettings
from mainspring.errors import ConfigError, ConfigProblem, ConflictError

__all__ = ["MemoryCache", "estimate_size"]

T = TypeVar("T")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NODE_OVERHEAD = 120  # the Node, its dict slot and the key object, roughly
_SWEEP_EVERY = 16
_SWEEP_PROBE = 4
_ATOMS = (str, bytes, bytearray, int, float, bool, type(None))


def estimate_size(value: Any, _depth: int = 0) -> int:
    """Estimate the memory of ``value`` in bytes: ``sys.getsizeof`` over containers, 8 levels deep."""
    size = sys.getsizeof(value)
    if _depth >= 8 or isinstance(value, _ATOMS):
        return size
    if isinstance(value, dict):
        return size + sum(
            estimate_size(k, _depth + 1) + estimate_size(v, _depth + 1) for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return size + sum(estimate_size(v, _depth + 1) for v in value)
    if isinstance(value, Entry):
        return size + estimate_size(value.value, _depth + 1)
    attrs = getattr(value, "__dict__", None)
    return size + (estimate_size(attrs, _depth + 1) if isinstance(attrs, dict) else 0)


class MemoryCache(BaseCache[Entry | bytes]):
    """A cache in this process's memory; see the module docstring for ``store`` and expiry.

    ``max_size`` bounds the entries, ``max_bytes`` the estimated bytes (``sizeof`` estimates a value;
    only computed when ``max_bytes`` is set); either or both, ``None`` for no bound. ``policy`` is
    ``"tinylfu"`` (better hit ratio under scans and skew) or ``"lru"``. Tag versions are entries too.
    Safe to share between the event loop and threads using :attr:`sync`: writes take a lock, hits don't.
    """

    backend_name: ClassVar[str] = "memory"
    measure_latency: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_size: int | None = 10_000,
        max_bytes: int | None = None,
        policy: Literal["lru", "tinylfu"] = "tinylfu",
        store: Literal["object", "bytes"] = "object",
        sizeof: Callable[[Any], int] | None = None,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Check the bounds and options; nothing is allocated beyond empty structures."""
        super().__init__(**options)
        problems = [
            ConfigProblem(f"cache.{name}", "must be an integer >= 1, or None for no bound", repr(value))
            for name, value in (("max_size", max_size), ("max_bytes", max_bytes))
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ]
        if policy not in ("lru", "tinylfu"):
            problems.append(ConfigProblem("cache.policy", "use 'lru' or 'tinylfu'", repr(policy)))
        if store not in ("object", "bytes"):
            problems.append(ConfigProblem("cache.store", "use 'object' or 'bytes'", repr(store)))
        if problems:
            raise ConfigError("invalid memory cache options", problems=problems)
        self._policy: Policy = (
            LruPolicy(max_size, max_bytes) if policy == "lru" else TinyLfuPolicy(max_size, max_bytes)
        )
        self.policy_name = policy
        self.store = store
        self._touch = self._policy.touch
        self._objects = store == "object"
        self._max_bytes = max_bytes
        self._sizeof = sizeof or estimate_size
        self._data: dict[str, Node] = {}
        self._lock = threading.RLock()
        self._writes = 0
        self._prefix = self.keys.entry_prefix
        self._max_key = self.keys.max_key_length
        self._sync: SyncView | None = None
        # Without early refresh a fresh hit needs nothing but the lookup.
        self._plain_hits = not (self._xfetch_beta or self._refresh_ahead)

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> MemoryCache:
        """Build a memory cache from ``settings`` (the URL's query is not read: see ``create_cache``)."""
        return cls(
            max_size=settings.max_size,
            max_bytes=settings.max_bytes,
            policy=settings.policy,
            store=settings.store,
            **cache_options(settings),
        )

    def _default_clock(self) -> Callable[[], float]:
        # Entries never leave the process, so the monotonic clock (immune to wall-clock jumps) is right.
        return time.monotonic

    @property
    def sync(self) -> SyncView:
        """The synchronous surface of this cache (for ``@cached`` on plain functions and threads)."""
        if self._sync is None:
            self._sync = SyncView(self)
        return self._sync

    # --- the fast paths -----------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default`` on a miss (a cached ``None`` is a hit)."""
        try:
            node = self._data.get(self._prefix + key) if len(key) <= self._max_key else None
        except TypeError:
            node = None  # not a str: the general path raises the proper error
        if node is not None and self._clock() < node.fresh:
            self._counters.hits += 1
            self._touch(node)
            return node.value
        return await super().get(key, default)

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
        """Return the cached value of ``key``, or load it once; see :meth:`BaseCache.get_or_set`."""
        if self._plain_hits and xfetch_beta is None and refresh_ahead is None:
            try:
                node = self._data.get(self._prefix + key) if len(key) <= self._max_key else None
            except TypeError:
                node = None
            if node is not None and self._clock() < node.fresh:
                self._counters.hits += 1
                self._touch(node)
                return cast(T, node.value)
        return await super().get_or_set(
            key,
            loader,
            ttl=ttl,
            tags=tags,
            negative_ttl=negative_ttl,
            cache_none=cache_none,
            stale_ttl=stale_ttl,
            loader_timeout=loader_timeout,
            lock=lock,
            lock_ttl=lock_ttl,
            lock_wait=lock_wait,
            xfetch_beta=xfetch_beta,
            refresh_ahead=refresh_ahead,
        )

    # --- storage ------------------------------------------------------------------------------------

    def _pack(self, entry: Entry) -> Entry | bytes:
        return entry if self._objects else self.serializer.encode(entry)

    def _unpack(self, stored: Entry | bytes) -> Entry:
        return stored if isinstance(stored, Entry) else self.serializer.decode(stored)

    def _drop(self, node: Node) -> None:
        if self._data.get(node.key) is node:
            del self._data[node.key]
        self._policy.remove(node)

    def _expire(self, node: Node) -> None:
        with self._lock:
            if self._data.get(node.key) is node:
                self._drop(node)
                self._counters.expirations += 1

    def _put(self, key: str, stored: Entry | bytes, expires: float) -> None:
        if isinstance(stored, Entry):
            value = stored.value
            fresh = -math.inf if stored.tags else stored.fresh_until
        else:
            value, fresh = None, -math.inf
        weight = _NODE_OVERHEAD + len(key) + self._sizeof(stored) if self._max_bytes is not None else 0
        old = self._data.get(key)
        if self._max_bytes is not None and weight > self._max_bytes:
            # Larger than the whole cache: not stored, and the old value must not stay visible either.
            if old is not None:
                self._drop(old)
            self._counters.evictions += 1
            return
        node = Node(key, stored, value, fresh, expires, weight)
        self._data[key] = node
        victims = self._policy.insert(node) if old is None else self._policy.replace(old, node)
        for victim in victims:
            if self._data.get(victim.key) is victim:
                del self._data[victim.key]
            self._counters.evictions += 1

    def _sweep(self, now: float) -> None:
        # A clock hand over the dict: probe a few of the oldest-inserted nodes, drop the expired ones
        # and move the live ones to the back, so the next sweep looks further.
        self._writes += 1
        if self._writes % _SWEEP_EVERY:
            return
        for node in list(islice(self._data.values(), _SWEEP_PROBE)):
            if node.expires <= now:
                self._drop(node)
                self._counters.expirations += 1
            else:
                del self._data[node.key]
                self._data[node.key] = node

    def _live(self, key: str, now: float) -> Node | None:
        node = self._data.get(key)
        if node is not None and node.expires <= now:
            self._expire(node)
            return None
        return node

    async def _get_raw(self, keys: Sequence[str]) -> list[Entry | bytes | None]:
        now = self._clock()
        found: list[Entry | bytes | None] = []
        for key in keys:
            node = self._live(key, now)
            if node is None:
                found.append(None)
            else:
                self._touch(node)
                found.append(node.stored)
        return found

    async def _set_raw(self, items: Sequence[tuple[str, Entry | bytes]], ttl: float | None) -> None:
        now = self._clock()
        expires = math.inf if ttl is None else now + ttl
        with self._lock:
            for key, stored in items:
                self._put(key, stored, expires)
            self._sweep(now)

    async def _delete_raw(self, keys: Sequence[str]) -> int:
        now = self._clock()
        removed = 0
        with self._lock:
            for key in keys:
                node = self._data.get(key)
                if node is not None:
                    removed += node.expires > now
                    self._drop(node)
        return removed

    def _counter(self, key: str, stored: Entry | bytes) -> int:
        if isinstance(stored, Entry):
            if is_plain_int(stored):
                return cast(int, stored.value)
        elif stored and stored[0] < 0x80:
            return int(stored)
        raise not_a_counter(key.removeprefix(self._prefix))

    async def _incr_raw(self, key: str, by: int) -> int:
        with self._lock:
            now = self._clock()
            node = self._live(key, now)
            current = 0 if node is None else self._counter(key, node.stored)
            expires = math.inf if node is None else node.expires
            total = current + by
            if not _INT64_MIN <= total <= _INT64_MAX:
                raise ConflictError(
                    f"incrementing cache key {key.removeprefix(self._prefix)!r} by {by} leaves the "
                    "64-bit range",
                    details={"key": key[:200]},
                )
            self._put(key, Entry(total, expires) if self._objects else str(total).encode(), expires)
            return total

    async def _expire_raw(self, key: str, ttl: float) -> bool:
        with self._lock:
            now = self._clock()
            node = self._live(key, now)
            if node is None:
                return False
            node.expires = now + ttl
            if isinstance(node.stored, Entry):
                node.stored.fresh_until = node.expires
                if node.fresh != -math.inf:
                    node.fresh = node.expires
            return True

    async def _ttl_raw(self, key: str) -> float | None:
        now = self._clock()
        node = self._live(key, now)
        if node is None:
            return None
        return node.expires - now if node.expires != math.inf else math.inf

    async def _scan_delete(self, prefix: str) -> int:
        now = self._clock()
        removed = 0
        with self._lock:
            for key in [key for key in self._data if key.startswith(prefix)]:
                node = self._data[key]
                removed += node.expires > now
                self._drop(node)
        return removed

    def _backend_size(self) -> tuple[int | None, int | None]:
        return len(self._data), (self._policy.weight if self._max_bytes is not None else None)
