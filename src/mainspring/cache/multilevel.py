"""The multi-level cache (``memory+redis://``): a small, fast L1 in this process over a shared L2.

Reads try L1 (the memory cache's fast hit path), then L2, then the loader; a value found in L2 is
promoted into L1 with a shorter ttl of its own: ``min(l1_ttl, l1_max_ttl, what is left of its ttl)``.
Writes and deletes reach both levels and are published on the invalidation channel, so every other
instance drops the key from its L1. ``l1_max_ttl`` bounds how long a value can stay stale in an L1
that missed a message; after the channel reconnects, L1 is flushed, and while it is down L1 is
not used at all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit

from mainspring._lifecycle import AsyncLifecycle
from mainspring.cache._codec import Entry
from mainspring.cache._coherence import CoherenceStats, InvalidationKind, PromotionGuard, RedisInvalidation
from mainspring.cache._loading import (
    LoadSpec,
    TaskSet,
    check_fraction,
    check_seconds,
    refresh_due,
    seconds_or,
)
from mainspring.cache._stats import CacheHealth, CacheStats, Counters
from mainspring.cache.base import BaseCache
from mainspring.config._sections import CacheSettings
from mainspring.errors import ConfigError, ConfigProblem
from mainspring.logging import get_logger

__all__ = ["MultiLevelCache"]

log = get_logger("mainspring.cache")

T = TypeVar("T")
_MISS = object()
#: An XFetch refresh starts ``delta * beta * -ln(u)`` early; L1 stops serving ``_XFETCH_SPAN`` times
#: ``delta * beta`` before expiry, which leaves the early refresh ~98 % of its chances.
_XFETCH_SPAN = 4.0


class MultiLevelCache(AsyncLifecycle):
    """An L1 cache (normally a :class:`~mainspring.cache.MemoryCache`) in front of a shared L2.

    ``l1_ttl`` is how long a value lives in L1 (``None``: as long as it has left in L2), always capped
    by ``l1_max_ttl``: the longest a value can be served stale by an instance that missed an
    invalidation. ``invalidation`` is the cross-instance channel (a :class:`RedisInvalidation`); without
    it, other instances' writes are seen only when the L1 entry expires. Key space, codec, default ttls
    and loads are L2's; this cache starts and stops both levels.
    """

    backend_name: ClassVar[str] = "multilevel"

    def __init__(
        self,
        l1: BaseCache[Any],
        l2: BaseCache[Any],
        *,
        l1_ttl: float | None = None,
        l1_max_ttl: float = 60.0,
        invalidation: RedisInvalidation | None = None,
    ) -> None:
        """Check the bounds and keep the levels; nothing starts here (see :meth:`start`)."""
        problems: list[ConfigProblem] = []
        for name, value, optional in (("l1_ttl", l1_ttl, True), ("l1_max_ttl", l1_max_ttl, False)):
            ok = (value is None and optional) or (
                not isinstance(value, bool)
                and isinstance(value, int | float)
                and math.isfinite(value)
                and value > 0
            )
            if not ok:
                problems.append(
                    ConfigProblem(f"cache.{name}", "must be a finite number of seconds > 0", repr(value))
                )
        if l1 is l2:
            problems.append(ConfigProblem("cache.l1", "L1 and L2 must be two different caches"))
        if problems:
            raise ConfigError("invalid multi-level cache options", problems=problems)
        self.l1 = l1
        self.l2 = l2
        self.keys = l2.keys
        self.invalidation = invalidation
        self._l1_bound = min(l1_max_ttl, math.inf if l1_ttl is None else l1_ttl)
        self._counters = Counters()
        self._flights = TaskSet(self._flight_failed)
        self._guard = PromotionGuard()
        self._l1_flushes = 0
        self._running = False

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, extra: Mapping[str, str] | None = None
    ) -> MultiLevelCache:
        """Build L1 (memory options), L2 (Redis options) and the channel from a ``memory+redis://`` URL.

        The URL's query may also carry ``l1_ttl``, ``l1_max_ttl`` (seconds) and ``invalidation``
        (``pubsub``, the default, or ``none``); other unknown options go to the Redis cache.
        """
        # Imported here: the factory path is the only one that needs the concrete backends.
        from mainspring.cache.memory import MemoryCache
        from mainspring.cache.redis import RedisCache

        rest = dict(extra or {})
        problems: list[ConfigProblem] = []
        bounds: dict[str, float | None] = {"l1_ttl": None, "l1_max_ttl": 60.0}
        for name in bounds:
            if name in rest:
                raw = rest.pop(name)
                try:
                    bounds[name] = float(raw)
                except ValueError:
                    problems.append(ConfigProblem(f"cache.url?{name}", "must be a number of seconds", raw))
        mode = rest.pop("invalidation", "pubsub")
        if mode not in ("pubsub", "none"):
            problems.append(ConfigProblem("cache.url?invalidation", "use 'pubsub' or 'none'", mode))
        if problems:
            raise ConfigError("invalid multi-level cache URL", problems=problems)
        # The query was parsed into the settings and ``extra`` already; L2 must not read it again.
        l2_url = urlsplit(settings.url.split("+", 1)[1])._replace(query="").geturl()
        l2 = RedisCache.from_settings(settings.model_copy(update={"url": l2_url}), rest)
        return cls(
            MemoryCache.from_settings(settings),
            l2,
            l1_ttl=bounds["l1_ttl"],
            l1_max_ttl=cast(float, bounds["l1_max_ttl"]),
            invalidation=None if mode == "none" else RedisInvalidation(l2_url, namespace=settings.namespace),
        )

    def __repr__(self) -> str:
        return f"MultiLevelCache(l1={self.l1!r}, l2={self.l2!r})"

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start L1, L2, then the invalidation subscriber."""
        await self.l1.start()
        await self.l2.start()
        if self.invalidation is not None:
            await self.invalidation.start(self._on_invalidation)
        self._running = True

    async def stop(self) -> None:
        """Wait for loads and refreshes, stop the subscriber (cancelled and awaited), then both levels."""
        self._running = False
        wait = self.l2._shutdown_timeout
        # Loads and early refreshes publish what they change: they finish before the channel closes.
        cancelled = await self._flights.drain(wait) + await self.l2._tasks.drain(wait)
        if cancelled:
            log.warning("cache stopped with loads cancelled", cache=repr(self), cancelled=cancelled)
        if self.invalidation is not None:
            await self.invalidation.stop()
        await self.l2.stop()
        await self.l1.stop()

    # --- coherence ----------------------------------------------------------------------------------

    def _coherent(self) -> bool:
        # Without a subscription this instance would not hear of other writes: L1 must not be filled.
        return self.invalidation is None or (self._running and self.invalidation.connected)

    async def _on_invalidation(self, kind: InvalidationKind, items: Sequence[str]) -> None:
        """Drop from L1 what another instance changed (or everything, after a lost connection)."""
        self._guard.note(kind, items)
        if kind == "keys":
            await self.l1.delete_many(items)
        elif kind == "tags":
            await self.l1.invalidate_tags(*items)
        elif kind == "prefix":
            await self.l1.clear(items[0] if items else "")
        else:
            await self.l1.clear()
            self._l1_flushes += 1

    async def _changed(self, kind: InvalidationKind, items: Sequence[str]) -> None:
        self._guard.note(kind, items)
        if self.invalidation is not None:
            await self.invalidation.publish(kind, items)

    async def _read_l2(
        self, keys: Sequence[str], *, count: bool = True
    ) -> tuple[list[Entry | None], float, list[bool]]:
        """Read ``keys`` from L2: the entries, L2's clock, and whether each may be promoted."""
        start = self._guard.begin(keys)
        try:
            entries = await self.l2._read_entries([self.keys.entry(key) for key in keys])
        finally:
            promotable = self._guard.end(keys, start)
        now = self.l2._clock()
        if count:
            fresh = sum(1 for entry in entries if entry is not None and now < entry.fresh_until)
            self.l2._counters.hits += fresh
            self.l2._counters.misses += len(keys) - fresh
        return entries, now, promotable

    def _l1_ttl(self, entry: Entry, now: float, *, beta: float = 0.0, ahead: float = 0.0) -> float:
        """Return the L1 ttl of an L2 entry read at ``now`` (L2's clock); <= 0 means do not promote."""
        ttl = min(self._l1_bound, entry.fresh_until - now)
        # Early refresh runs on L2 reads: L1 stops serving the value before a refresh can be due.
        if ahead and entry.ttl is not None:
            ttl = min(ttl, entry.fresh_until - entry.ttl * ahead - now)
        if beta and entry.delta:
            ttl = min(ttl, entry.fresh_until - entry.delta * beta * _XFETCH_SPAN - now)
        return ttl

    async def _promote(self, key: str, entry: Entry, ttl: float, promotable: bool) -> None:
        if ttl > 0 and promotable and self._coherent():
            await self.l1.set(key, entry.value, ttl, [tag for tag, _ in entry.tags])

    async def _write_l1(self, mapping: Mapping[str, Any], ttl: float | None, tags: Iterable[str]) -> None:
        if not self._coherent():
            await self.l1.delete_many(mapping)
            return
        groups: dict[float, dict[str, Any]] = {}
        for key, value in mapping.items():
            own = ttl
            if own is None:
                own = self.l2._negative_ttl if value is None else self.l2._default_ttl
            groups.setdefault(min(self._l1_bound, math.inf if own is None else own), {})[key] = value
        for l1_ttl, items in groups.items():
            await self.l1.set_many(items, l1_ttl, tags)

    # --- reads --------------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key`` from L1, else from L2 (promoted into L1), else ``default``."""
        value = await self.l1.get(key, _MISS)
        if value is not _MISS:
            self._counters.hits += 1
            return value
        entries, now, promotable = await self._read_l2([key])
        entry = entries[0]
        if entry is None or now >= entry.fresh_until:
            self._counters.misses += 1
            return default
        self._counters.hits += 1
        await self._promote(key, entry, self._l1_ttl(entry, now), promotable[0])
        return entry.value

    async def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value in either level (not counted as a read)."""
        return await self.l1.exists(key) or await self.l2.exists(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys holding a fresh value, in the order given."""
        wanted = list(dict.fromkeys(keys))
        found = await self.l1.get_many(wanted)
        rest = [key for key in wanted if key not in found]
        if rest:
            entries, now, promotable = await self._read_l2(rest)
            for key, entry, ok in zip(rest, entries, promotable, strict=True):
                if entry is not None and now < entry.fresh_until:
                    found[key] = entry.value
                    await self._promote(key, entry, self._l1_ttl(entry, now), ok)
        self._counters.hits += len(found)
        self._counters.misses += len(wanted) - len(found)
        return {key: found[key] for key in wanted if key in found}

    # --- writes -------------------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` in L2 and L1, and tell the other instances to drop their copy."""
        await self.set_many({self.keys.check(key): value}, ttl, tags)

    async def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item in both levels (L1 with its own ttl) and publish the keys."""
        tags = list(tags) if not isinstance(tags, str) else tags
        errors = self.l2._counters.errors
        await self.l2.set_many(mapping, ttl, tags)
        await self._changed("keys", list(mapping))
        if self.l2._counters.errors != errors:
            # L2 did not take it: an L1 copy would be seen here only; drop the old one instead.
            await self.l1.delete_many(mapping)
            return
        self._counters.sets += len(mapping)
        await self._write_l1(mapping, ttl, tags)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from both levels and every instance's L1; say whether L2 had it."""
        return await self.delete_many([key]) > 0

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys`` from both levels and every instance's L1; return how many L2 had."""
        wanted = list(dict.fromkeys(keys))
        removed = await self.l2.delete_many(wanted)
        await self.l1.delete_many(wanted)
        if wanted:
            await self._changed("keys", wanted)
        self._counters.deletes += removed
        return removed

    async def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key`` in L2 atomically; L1 copies are dropped everywhere."""
        total = await self.l2.incr(key, by)
        await self.l1.delete(key)
        await self._changed("keys", [key])
        return total

    async def expire(self, key: str, ttl: float) -> bool:
        """Give ``key`` a new ttl in L2 (L1 copies are dropped); ``False`` if it holds no fresh value."""
        found = await self.l2.expire(key, ttl)
        await self.l1.delete(key)
        await self._changed("keys", [key])
        return found

    async def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh in L2 (``math.inf``: no expiry; ``None``: not cached)."""
        return await self.l2.ttl(key)

    async def clear(self, prefix: str = "") -> int:
        """Remove the entries starting with ``prefix`` from L2, this L1 and every other instance's L1."""
        removed = await self.l2.clear(prefix)
        await self.l1.clear(prefix)
        await self._changed("prefix", [prefix])
        return removed

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate the tags in L2 and in every instance's L1."""
        await self.l2.invalidate_tags(*tags)
        await self.l1.invalidate_tags(*tags)
        if tags:
            await self._changed("tags", list(tags))

    # --- get_or_set ---------------------------------------------------------------------------------

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
        """Return ``key`` from L1, else L2, else run ``loader`` once across both levels and cache it.

        Same options as :meth:`BaseCache.get_or_set`; the load, its lease (``lock=True``), fail-safe
        and early refresh are L2's. Concurrent L1 misses of one key share one L2 read and one load.
        """
        l2 = self.l2
        spec = LoadSpec(
            key=key,
            ttl=check_seconds("ttl", ttl, optional=True),
            tags=l2._check_tags(tags),
            negative_ttl=check_seconds("negative_ttl", negative_ttl, optional=True),
            cache_none=cache_none,
            stale_ttl=seconds_or("stale_ttl", stale_ttl, l2._stale_ttl, zero=True),
            timeout=l2._loader_timeout
            if loader_timeout is None
            else check_seconds("loader_timeout", loader_timeout),
            lock=lock,
            lock_ttl=seconds_or("lock_ttl", lock_ttl, l2._lock_ttl),
            lock_wait=seconds_or("lock_wait", lock_wait, l2._lock_wait, zero=True),
        )
        beta = seconds_or("xfetch_beta", xfetch_beta, l2._xfetch_beta, zero=True)
        ahead = l2._refresh_ahead if refresh_ahead is None else check_fraction("refresh_ahead", refresh_ahead)
        value = await self.l1.get(key, _MISS)
        if value is not _MISS:
            self._counters.hits += 1
            return cast(T, value)
        built = self.keys.entry(key)
        task = self._flights.flight(built)
        if task is None:
            task = self._flights.start(
                built,
                self._fetch(built, loader, spec, beta, ahead),
                name=f"mainspring.cache:l2:{key[:120]}",
                background=False,
            )
        # Shielded: a caller that gives up does not cancel the read/load the others are waiting for.
        hit, result = await asyncio.shield(task)
        if hit:
            self._counters.hits += 1
        else:
            self._counters.misses += 1
        return cast(T, result)

    async def _fetch(
        self, built: str, loader: Callable[[], Awaitable[Any]], spec: LoadSpec, beta: float, ahead: float
    ) -> tuple[bool, Any]:
        """Read L2 once for every waiting caller; load through L2 on a miss; promote into L1."""
        l2 = self.l2
        entries, now, promotable = await self._read_l2([spec.key])
        entry = entries[0]
        if entry is not None and now < entry.fresh_until:
            if (
                (beta or ahead)
                and self._running
                and l2._tasks.flight(built) is None
                and refresh_due(entry, now, beta, ahead, l2._rng)
            ):
                l2._tasks.start(
                    built,
                    self._refresh(built, loader, spec, entry),
                    name=f"mainspring.cache:refresh:{spec.key[:120]}",
                    background=True,
                )
            await self._promote(
                spec.key, entry, self._l1_ttl(entry, now, beta=beta, ahead=ahead), promotable[0]
            )
            return True, entry.value
        stale = entry if entry is not None and now < entry.fresh_until + entry.stale_ttl else None
        value = await l2._single_flight(built, loader, spec, stale)
        # Read back what was stored (not stored, stale, or tag-invalidated meanwhile: not promoted).
        entries, now, promotable = await self._read_l2([spec.key], count=False)
        stored = entries[0]
        if stored is not None and now < stored.fresh_until:
            ttl = self._l1_ttl(stored, now, beta=beta, ahead=ahead)
            await self._promote(spec.key, stored, ttl, promotable[0])
        return False, value

    async def _refresh(
        self, built: str, loader: Callable[[], Awaitable[Any]], spec: LoadSpec, entry: Entry
    ) -> Any:
        value = await self.l2._load(built, loader, spec, entry, background=True)
        await self.l1.delete(spec.key)
        await self._changed("keys", [spec.key])
        return value

    def _flight_failed(self, key: str, exc: BaseException) -> None:
        # TaskSet reports failures of background tasks only; the flights here are awaited by their
        # callers (refreshes run in L2's task set), so this is a safety net that should stay silent.
        self._counters.refresh_errors += 1
        log.error(
            "cache background work failed", cache=repr(self), key=key, error=f"{type(exc).__name__}: {exc}"
        )

    # --- stats and health ---------------------------------------------------------------------------

    def _set_raw(self, items: Sequence[tuple[str, Any]], ttl: float | None) -> Awaitable[None]:
        """Write stored forms straight into L2 (the shared level), bypassing L1 and the channel."""
        return self.l2._set_raw(items, ttl)

    def stats(self) -> CacheStats:
        """Return this cache's reads and writes with the loads, errors and evictions of both levels.

        ``hits`` are reads served by either level, ``misses`` reads served by neither; latency and
        loads are L2's; ``entries``/``size_bytes`` are L1's. See :meth:`level_stats` for each level.
        """
        one, two = self.l1.stats(), self.l2.stats()
        own = self._counters
        channel = self.coherence_stats()
        return CacheStats(
            backend=self.backend_name,
            hits=own.hits,
            misses=own.misses,
            stale_served=one.stale_served + two.stale_served,
            errors=one.errors + two.errors + channel.subscriber_errors + channel.publish_errors,
            undecodable=one.undecodable + two.undecodable,
            evictions=one.evictions + two.evictions,
            expirations=one.expirations + two.expirations,
            sets=own.sets,
            deletes=own.deletes,
            loads=two.loads,
            load_errors=two.load_errors,
            load_timeouts=two.load_timeouts,
            refreshes=two.refreshes,
            refresh_errors=two.refresh_errors + own.refresh_errors,
            latency_count=two.latency_count,
            latency_total=two.latency_total,
            latency_max=two.latency_max,
            entries=one.entries,
            size_bytes=one.size_bytes,
        )

    def level_stats(self) -> dict[str, CacheStats]:
        """Return the stats of each level: ``{"l1": ..., "l2": ...}`` (L1 hits are this cache's fast hits)."""
        return {"l1": self.l1.stats(), "l2": self.l2.stats()}

    def coherence_stats(self) -> CoherenceStats:
        """Return the invalidation channel's counters (all zero without a channel) and L1 flushes."""
        if self.invalidation is None:
            return CoherenceStats("", "", False, 0, 0, 0, 0, 0, 0, None)
        return self.invalidation.stats()

    @property
    def l1_flushes(self) -> int:
        """How many times L1 was flushed because the invalidation channel lost messages."""
        return self._l1_flushes

    async def health(self) -> CacheHealth:
        """Check L2 with one round trip; unhealthy too when the invalidation channel is not subscribed."""
        l2 = await self.l2.health()
        detail = l2.detail
        if self.invalidation is not None:
            # Still healthy: without the channel L1 is bypassed, so reads stay correct, only slower.
            channel = self.invalidation.stats()
            if not channel.connected:
                detail = f"{detail}; invalidation channel down ({channel.last_error or 'not subscribed'})"
            elif channel.subscriber_errors:
                errors = channel.subscriber_errors
                detail = f"{detail}; invalidation channel: {errors} errors, last: {channel.last_error}"
        return CacheHealth(l2.healthy, self.backend_name, l2.latency, detail, self.stats())
