"""The cache contract and everything backends share: keys, encoding, tags, negative caching, stampede
protection, fail-safe, stats and degradation.

A backend subclasses :class:`BytesCache` (or :class:`BaseCache` for a store of its own kind) and
implements a handful of raw primitives over already-built keys: ``_get_raw``, ``_set_raw``,
``_delete_raw``, ``_incr_raw``, ``_expire_raw``, ``_ttl_raw``, ``_scan_delete`` (and ``_ping``). Every
public method lives here, so every backend behaves the same; the shared contract suite checks it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import secrets
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, ClassVar, Generic, TypeVar, cast

from typing_extensions import Unpack

from mainspring._lifecycle import AsyncLifecycle
from mainspring.cache._codec import CodecError, Entry, is_plain_int
from mainspring.cache._errors import CacheBackendError, CacheLoaderTimeoutError, not_a_counter
from mainspring.cache._loading import (
    LoadSpec,
    TaskSet,
    check_fraction,
    check_seconds,
    fail_safe,
    refresh_due,
    seconds_or,
)
from mainspring.cache._options import CacheOptions, Tuning
from mainspring.cache._protocols import Cache, SupportsSync, SyncCache
from mainspring.cache._stats import CacheHealth, CacheStats, Counters
from mainspring.errors import ValidationError
from mainspring.logging import get_logger

__all__ = [
    "BaseCache",
    "BytesCache",
    "Cache",
    "CacheBackendError",
    "CacheLoaderTimeoutError",
    "CacheOptions",
    "Entry",
    "SupportsSync",
    "SyncCache",
    "not_a_counter",
]

log = get_logger("mainspring.cache")

T = TypeVar("T")
StoredT = TypeVar("StoredT")


class BaseCache(AsyncLifecycle, Generic[StoredT]):
    """All the shared logic of a cache over raw primitives; ``StoredT`` is what the backend stores.

    Subclasses implement the primitives and :meth:`_pack`/:meth:`_unpack` (how an :class:`Entry` is
    stored). Nothing here starts a task or opens a connection in ``__init__``.
    """

    #: Name in stats, health and logs.
    backend_name: ClassVar[str] = "base"
    #: Whether each primitive call is timed into ``stats().latency_*`` (off for in-process stores).
    measure_latency: ClassVar[bool] = True

    def __init__(self, **options: Unpack[CacheOptions]) -> None:
        """Check and keep the options; ``ConfigError``/``ValidationError`` name a bad one."""
        tuning = Tuning.from_options(options)
        self.keys = tuning.keys
        self._default_ttl = tuning.default_ttl
        self._negative_ttl = tuning.negative_ttl
        self._stale_ttl = tuning.stale_ttl
        self._loader_timeout = tuning.loader_timeout
        self._tag_ttl = tuning.tag_ttl
        self._xfetch_beta = tuning.xfetch_beta
        self._refresh_ahead = tuning.refresh_ahead
        self._lock_ttl = tuning.lock_ttl
        self._lock_wait = tuning.lock_wait
        self._shutdown_timeout = tuning.shutdown_timeout
        self.serializer = tuning.serializer
        self._clock: Callable[[], float] = tuning.clock or self._default_clock()
        self._rng = tuning.rng
        self._counters = Counters()
        self._tasks = TaskSet(self._background_failed)
        self._closing = False

    def _default_clock(self) -> Callable[[], float]:
        # Wall time: entries written by one process are judged fresh or not by another.
        return time.time

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.keys.namespace!r}, version={self.keys.version!r})"

    # --- the backend contract -----------------------------------------------------------------------

    @abstractmethod
    def _pack(self, entry: Entry) -> StoredT:
        """Return the stored form of ``entry``; :class:`CodecError` if its value cannot be encoded."""

    @abstractmethod
    def _unpack(self, stored: StoredT) -> Entry:
        """Return the entry ``stored`` holds; :class:`CodecError` if it cannot be decoded."""

    @abstractmethod
    async def _get_raw(self, keys: Sequence[str]) -> list[StoredT | None]:
        """Return the stored value of each key (``None`` when missing), in order."""

    @abstractmethod
    async def _set_raw(self, items: Sequence[tuple[str, StoredT]], ttl: float | None) -> None:
        """Store every item, replacing what is there, expiring after ``ttl`` seconds (``None``: never)."""

    @abstractmethod
    async def _delete_raw(self, keys: Sequence[str]) -> int:
        """Remove the keys; return how many existed."""

    @abstractmethod
    async def _incr_raw(self, key: str, by: int) -> int:
        """Add ``by`` to a plain-integer value (0 when missing) atomically, keeping its ttl.

        Raise :class:`~mainspring.errors.ConflictError` when the key holds anything else.
        """

    @abstractmethod
    async def _expire_raw(self, key: str, ttl: float) -> bool:
        """Set the key to expire ``ttl`` seconds from now; ``False`` when missing."""

    @abstractmethod
    async def _ttl_raw(self, key: str) -> float | None:
        """Return the seconds until the key expires: ``math.inf`` if never, ``None`` if missing."""

    @abstractmethod
    async def _scan_delete(self, prefix: str) -> int:
        """Remove every key starting with ``prefix`` (incrementally, never blocking the server)."""

    async def _ping(self) -> None:
        """Make one round trip to the backend; raise :class:`CacheBackendError` when it fails."""
        await self._get_raw([self.keys.entry("__health__")])

    def _backend_size(self) -> tuple[int | None, int | None]:
        """Return how many entries and bytes the backend holds, when it knows cheaply."""
        return None, None

    def _lease(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        """Guard a load of ``key`` across processes; yield whether the lease was taken within ``wait``.

        The default yields ``True`` at once: within one process the single flight is already exact.
        A shared backend overrides it with a lease of ``ttl`` seconds on ``self.keys.lease(key)``.
        """
        return nullcontext(True)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Get ready for use (the base has nothing to open); backends call ``super().start()``."""
        self._closing = False

    async def stop(self) -> None:
        """Wait up to ``shutdown_timeout`` for background loads and refreshes, then cancel the rest."""
        self._closing = True
        cancelled = await self._tasks.drain(self._shutdown_timeout)
        if cancelled:
            log.warning(
                "cache stopped with background loads cancelled", cache=repr(self), cancelled=cancelled
            )

    # --- plumbing: timing, degradation, decoding, tags ----------------------------------------------

    async def _timed(self, awaitable: Awaitable[T]) -> T:
        if not self.measure_latency:
            return await awaitable
        started = time.perf_counter()
        try:
            return await awaitable
        finally:
            self._counters.observe(time.perf_counter() - started)

    def _degraded(self, operation: str, exc: CacheBackendError) -> None:
        self._counters.errors += 1
        log.warning(
            "cache backend failed; degraded", cache=repr(self), operation=operation, error=exc.message
        )

    async def _fetch(self, keys: Sequence[str]) -> list[StoredT | None] | None:
        # _timed inlined: this is every read's path, and a coroutine layer costs at each suspension.
        measure = self.measure_latency
        started = time.perf_counter() if measure else 0.0
        try:
            stored = await self._get_raw(keys)
        except CacheBackendError as exc:
            self._degraded("get", exc)
            return None
        finally:
            if measure:
                self._counters.observe(time.perf_counter() - started)
        return stored

    async def _store(self, items: Sequence[tuple[str, StoredT]], ttl: float | None) -> bool:
        try:
            await self._timed(self._set_raw(items, ttl))
        except CacheBackendError as exc:
            self._degraded("set", exc)
            return False
        return True

    def _decode(self, key: str, stored: StoredT) -> Entry | None:
        try:
            return self._unpack(stored)
        except CodecError as exc:
            self._counters.undecodable += 1
            log.warning(
                "undecodable cache entry read as a miss", cache=repr(self), key=key, reason=exc.message
            )
            return None

    def _check_tags(self, tags: Iterable[str]) -> tuple[str, ...]:
        if isinstance(tags, str):
            raise ValidationError("tags must be a collection of strings, not one string: use tags=['user:1']")
        out = tuple(dict.fromkeys(tags))
        for tag in out:
            self.keys.check(tag, "tag")
        if len(out) > 255:
            raise ValidationError(f"an entry takes at most 255 tags, got {len(out)}")
        return out

    async def _tag_versions(self, tags: Sequence[str], *, create: bool) -> dict[str, int] | None:
        """Return the current version of each tag; with ``create``, give missing ones a new version."""
        built = [self.keys.tag(tag) for tag in tags]
        stored = await self._fetch(built)
        if stored is None:
            return None
        versions: dict[str, int] = {}
        missing: list[tuple[str, StoredT]] = []
        for tag, key, raw in zip(tags, built, stored, strict=True):
            entry = self._decode(key, raw) if raw is not None else None
            if entry is not None and type(entry.value) is int:
                versions[tag] = entry.value
            elif create:
                versions[tag] = secrets.randbits(63)
                missing.append((key, self._pack(Entry(versions[tag]))))
        if missing and not await self._store(missing, self._tag_ttl):
            return None
        return versions

    async def _read_entries(self, keys: Sequence[str]) -> list[Entry | None]:
        """Return the entry of each built key, fresh or stale; ``None`` for a miss or an invalid entry."""
        stored = await self._fetch(keys)
        if stored is None:
            return [None] * len(keys)
        if len(keys) == 1:  # the common case, one key: no comprehensions, no set when untagged
            (raw,) = stored
            entry = None if raw is None else self._decode(keys[0], raw)
            if entry is None or not entry.tags:
                return [entry]
            entries: list[Entry | None] = [entry]
        else:
            entries = [
                None if raw is None else self._decode(key, raw) for key, raw in zip(keys, stored, strict=True)
            ]
        tags = {tag for entry in entries if entry is not None for tag, _ in entry.tags}
        if tags:
            versions = await self._tag_versions(sorted(tags), create=False)
            for index, entry in enumerate(entries):
                # Unknown versions (backend down, tag key gone) invalidate: never serve doubtful data.
                if (
                    entry is not None
                    and entry.tags
                    and (versions is None or any(versions.get(t) != v for t, v in entry.tags))
                ):
                    entries[index] = None
        return entries

    def _make_entry(
        self,
        value: Any,
        ttl: float | None,
        versions: Mapping[str, int],
        *,
        negative_ttl: float | None = None,
        stale_ttl: float | None = None,
        delta: float = 0.0,
    ) -> tuple[Entry, float | None]:
        """Return the entry for ``value`` and the physical ttl to store it with."""
        if ttl is None:
            ttl = (negative_ttl or self._negative_ttl) if value is None else self._default_ttl
        stale = self._stale_ttl if stale_ttl is None else stale_ttl
        now = self._clock()
        fresh_until = math.inf if ttl is None else now + ttl
        entry = Entry(value, fresh_until, ttl, stale, delta, tuple(versions.items()))
        return entry, None if ttl is None else ttl + stale

    # --- the public API -----------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default`` on a miss (a cached ``None`` is a hit)."""
        entry = (await self._read_entries([self.keys.entry(key)]))[0]
        if entry is not None and self._clock() < entry.fresh_until:
            self._counters.hits += 1
            return entry.value
        self._counters.misses += 1
        return default

    async def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value (not counted as a read)."""
        entry = (await self._read_entries([self.keys.entry(key)]))[0]
        return entry is not None and self._clock() < entry.fresh_until

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys holding a fresh value, in the order given."""
        wanted = list(dict.fromkeys(keys))
        entries = await self._read_entries([self.keys.entry(key) for key in wanted])
        now = self._clock()
        found: dict[str, Any] = {}
        for key, entry in zip(wanted, entries, strict=True):
            if entry is not None and now < entry.fresh_until:
                found[key] = entry.value
        self._counters.hits += len(found)
        self._counters.misses += len(wanted) - len(found)
        return found

    async def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` for ``ttl`` seconds (default ``default_ttl``; ``negative_ttl`` for ``None``)."""
        await self._write([(self.keys.entry(key), value)], ttl, tags)

    async def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping``, attached to ``tags``; a backend failure makes it a no-op."""
        await self._write([(self.keys.entry(key), value) for key, value in mapping.items()], ttl, tags)

    async def _write(self, built: Sequence[tuple[str, Any]], ttl: float | None, tags: Iterable[str]) -> None:
        seconds = check_seconds("ttl", ttl, optional=True)
        tag_names = self._check_tags(tags)
        versions: Mapping[str, int] = {}
        if tag_names:
            found = await self._tag_versions(tag_names, create=True)
            if found is None:
                return  # degraded: an entry with unknown tag versions could never be invalidated
            versions = found
        groups: dict[float | None, list[tuple[str, StoredT]]] = {}
        for key, value in built:
            entry, physical = self._make_entry(value, seconds, versions)
            groups.setdefault(physical, []).append((key, self._pack(entry)))
        for physical, items in groups.items():
            if await self._store(items, physical):
                self._counters.sets += len(items)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; say whether it was there (``False`` too when the backend failed, logged)."""
        return await self.delete_many([key]) > 0

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many were there."""
        built = list(dict.fromkeys(self.keys.entry(key) for key in keys))
        if not built:
            return 0
        try:
            removed = await self._timed(self._delete_raw(built))
        except CacheBackendError as exc:
            self._degraded("delete", exc)
            return 0
        self._counters.deletes += removed
        return removed

    async def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key`` atomically (0 when missing), keeping its ttl; return the sum."""
        if isinstance(by, bool) or not isinstance(by, int):
            raise ValidationError(f"incr needs an integer step, got {by!r}", details={"field": "by"})
        return await self._timed(self._incr_raw(self.keys.entry(key), by))

    async def expire(self, key: str, ttl: float) -> bool:
        """Make ``key`` fresh for ``ttl`` more seconds from now; ``False`` if it holds no fresh value."""
        seconds = cast(float, check_seconds("ttl", ttl))
        built = self.keys.entry(key)
        entry = (await self._read_entries([built]))[0]
        now = self._clock()
        if entry is None or now >= entry.fresh_until:
            return False
        if is_plain_int(entry):
            # A counter: let the backend do it, so concurrent incr calls are not overwritten.
            return await self._timed(self._expire_raw(built, seconds))
        entry.fresh_until, entry.ttl = now + seconds, seconds
        await self._timed(self._set_raw([(built, self._pack(entry))], seconds + entry.stale_ttl))
        return True

    async def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh: ``math.inf`` without expiry, ``None`` if not cached."""
        built = self.keys.entry(key)
        entry = (await self._read_entries([built]))[0]
        now = self._clock()
        if entry is None or now >= entry.fresh_until:
            return None
        if entry.fresh_until != math.inf:
            return entry.fresh_until - now
        if is_plain_int(entry):
            return await self._timed(self._ttl_raw(built))
        return math.inf

    async def clear(self, prefix: str = "") -> int:
        """Remove every entry whose key starts with ``prefix``; return how many were removed."""
        return await self._timed(self._scan_delete(self.keys.prefix(prefix)))

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry attached to any of ``tags``: each tag gets a new random version."""
        names = self._check_tags(tags)
        if not names:
            return
        items = [(self.keys.tag(tag), self._pack(Entry(secrets.randbits(63)))) for tag in names]
        if not await self._store(items, self._tag_ttl):
            log.error("cache tags NOT invalidated: backend failed", cache=repr(self), tags=list(names))

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        entries, size = self._backend_size()
        return self._counters.snapshot(self.backend_name, entries, size)

    async def health(self) -> CacheHealth:
        """Make one round trip to the backend and report it with the stats."""
        started = time.perf_counter()
        try:
            await self._ping()
        except CacheBackendError as exc:
            return CacheHealth(False, self.backend_name, None, exc.message, self.stats())
        return CacheHealth(True, self.backend_name, time.perf_counter() - started, "ok", self.stats())

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
        """Return the cached value of ``key``, or run ``loader`` once and cache what it returns.

        Concurrent misses of one key in this process share one loader call; ``lock=True`` adds a
        distributed lease so processes share it too (on backends that have one). ``loader_timeout``
        (default: the cache's) bounds the loader. When the loader fails or times out and the entry is
        within ``stale_ttl`` past its ttl, the stale value is returned (logged, counted); otherwise the
        error propagates (:class:`CacheLoaderTimeoutError` for a timeout). ``xfetch_beta`` (XFetch) or
        ``refresh_ahead`` (fraction of the ttl) reload a hot entry in the background before it expires.
        A ``None`` result is cached for ``negative_ttl`` unless ``cache_none=False``.
        """
        built = self.keys.entry(key)
        spec = LoadSpec(
            key=key,
            ttl=check_seconds("ttl", ttl, optional=True),
            tags=self._check_tags(tags),
            negative_ttl=check_seconds("negative_ttl", negative_ttl, optional=True),
            cache_none=cache_none,
            stale_ttl=seconds_or("stale_ttl", stale_ttl, self._stale_ttl, zero=True),
            timeout=self._loader_timeout
            if loader_timeout is None
            else check_seconds("loader_timeout", loader_timeout),
            lock=lock,
            lock_ttl=seconds_or("lock_ttl", lock_ttl, self._lock_ttl),
            lock_wait=seconds_or("lock_wait", lock_wait, self._lock_wait, zero=True),
        )
        entry = (await self._read_entries([built]))[0]
        now = self._clock()
        if entry is not None and now < entry.fresh_until:
            self._counters.hits += 1
            beta = seconds_or("xfetch_beta", xfetch_beta, self._xfetch_beta, zero=True)
            ahead = (
                self._refresh_ahead
                if refresh_ahead is None
                else check_fraction("refresh_ahead", refresh_ahead)
            )
            if (
                (beta or ahead)
                and not self._closing
                and self._tasks.flight(built) is None
                and refresh_due(entry, now, beta, ahead, self._rng)
            ):
                self._tasks.start(
                    built,
                    self._load(built, loader, spec, entry, background=True),
                    name=f"mainspring.cache:refresh:{key[:120]}",
                    background=True,
                )
            return cast(T, entry.value)
        self._counters.misses += 1
        stale = entry if entry is not None and now < entry.fresh_until + entry.stale_ttl else None
        return await self._single_flight(built, loader, spec, stale)

    async def _single_flight(
        self, built: str, loader: Callable[[], Awaitable[T]], spec: LoadSpec, stale: Entry | None
    ) -> T:
        task = self._tasks.flight(built)
        if task is None:
            task = self._tasks.start(
                built,
                self._load(built, loader, spec, stale, background=False),
                name=f"mainspring.cache:load:{spec.key[:120]}",
                background=False,
            )
        # Shielded: a caller that gives up does not cancel the load the others are waiting for.
        return cast(T, await asyncio.shield(task))

    async def _load(
        self,
        built: str,
        loader: Callable[[], Awaitable[Any]],
        spec: LoadSpec,
        stale: Entry | None,
        *,
        background: bool,
    ) -> Any:
        # Tag versions are read BEFORE the loader runs: if a tag is invalidated while it loads, the
        # value (maybe built from the old data) is stored under the old version, hence already invalid.
        versions: Mapping[str, int] = {}
        if spec.tags:
            found = await self._tag_versions(spec.tags, create=True)
            versions = found if found is not None else {}
        lease = (
            self._lease(spec.key, ttl=spec.lock_ttl, wait=spec.lock_wait) if spec.lock else nullcontext(True)
        )
        async with lease as held:
            if spec.lock:
                if not held:
                    log.warning("cache lease wait ran out; loading anyway", cache=repr(self), key=spec.key)
                # Another process may have loaded it while we waited for the lease. (For a background
                # refresh the entry we saw is still fresh: only a newer one means someone refreshed.)
                current = (await self._read_entries([built]))[0]
                if (
                    current is not None
                    and self._clock() < current.fresh_until
                    and (stale is None or current.fresh_until != stale.fresh_until)
                ):
                    return current.value
            if background:
                self._counters.refreshes += 1
            else:
                self._counters.loads += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(spec.timeout):
                    result = loader()
                    value = await result if inspect.isawaitable(result) else result
            except TimeoutError as exc:
                self._counters.load_timeouts += 1
                return fail_safe(spec, stale, exc, self._clock(), self._counters, repr(self), timed_out=True)
            except Exception as exc:  # noqa: BLE001 - the fail-safe re-raises it unless a stale value stands in
                self._counters.load_errors += 1
                return fail_safe(spec, stale, exc, self._clock(), self._counters, repr(self), timed_out=False)
            delta = time.perf_counter() - started
            if value is None and not spec.cache_none:
                return None
            if spec.tags and not versions:
                return value  # tag versions unknown (backend failed): do not store an uninvalidatable entry
            entry, physical = self._make_entry(
                value,
                spec.ttl,
                versions,
                negative_ttl=spec.negative_ttl,
                stale_ttl=spec.stale_ttl,
                delta=delta,
            )
            if await self._store([(built, self._pack(entry))], physical):
                self._counters.sets += 1
            return value

    def _background_failed(self, key: str, exc: BaseException) -> None:
        self._counters.refresh_errors += 1
        log.error(
            "cache background refresh failed", cache=repr(self), key=key, error=f"{type(exc).__name__}: {exc}"
        )


class BytesCache(BaseCache[bytes]):
    """A cache whose backend stores bytes: entries go through :attr:`serializer` (codec + frame).

    The base for the Redis backend; ``_incr_raw`` must raise
    :class:`~mainspring.errors.ConflictError` for a value that is not a plain integer.
    """

    def _pack(self, entry: Entry) -> bytes:
        return self.serializer.encode(entry)

    def _unpack(self, stored: bytes) -> Entry:
        return self.serializer.decode(stored)
