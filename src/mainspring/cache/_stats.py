"""What a cache counts (hits, misses, stale values served, errors, latency, evictions) and reports."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheHealth", "CacheStats", "Counters"]


class Counters:
    """The live, mutable counters of one cache; :meth:`snapshot` freezes them into :class:`CacheStats`.

    Plain attributes, bumped with ``+=`` on the hot path: cheaper than any abstraction over them.
    Updates from several threads (the sync surface) may rarely lose an increment; these are statistics.
    """

    __slots__ = (
        "deletes",
        "errors",
        "evictions",
        "expirations",
        "hits",
        "latency_count",
        "latency_max",
        "latency_total",
        "load_errors",
        "load_timeouts",
        "loads",
        "misses",
        "refresh_errors",
        "refreshes",
        "sets",
        "stale_served",
        "undecodable",
    )

    def __init__(self) -> None:
        """Start every counter at zero."""
        self.reset()

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.hits = self.misses = self.stale_served = self.errors = self.undecodable = 0
        self.evictions = self.expirations = self.sets = self.deletes = 0
        self.loads = self.load_errors = self.load_timeouts = self.refreshes = self.refresh_errors = 0
        self.latency_count = 0
        self.latency_total = self.latency_max = 0.0

    def observe(self, seconds: float) -> None:
        """Record the duration of one backend call."""
        self.latency_count += 1
        self.latency_total += seconds
        if seconds > self.latency_max:
            self.latency_max = seconds

    def snapshot(self, backend: str, entries: int | None, size_bytes: int | None) -> CacheStats:
        """Return the counters as a frozen :class:`CacheStats`."""
        return CacheStats(
            backend=backend,
            hits=self.hits,
            misses=self.misses,
            stale_served=self.stale_served,
            errors=self.errors,
            undecodable=self.undecodable,
            evictions=self.evictions,
            expirations=self.expirations,
            sets=self.sets,
            deletes=self.deletes,
            loads=self.loads,
            load_errors=self.load_errors,
            load_timeouts=self.load_timeouts,
            refreshes=self.refreshes,
            refresh_errors=self.refresh_errors,
            latency_count=self.latency_count,
            latency_total=self.latency_total,
            latency_max=self.latency_max,
            entries=entries,
            size_bytes=size_bytes,
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters, from :meth:`Cache.stats`.

    ``hits``/``misses`` count reads (``get``, ``get_many`` per key, ``get_or_set``); ``stale_served`` the
    stale values returned because the loader failed; ``errors`` backend failures that were degraded to
    a miss or a no-op; ``undecodable`` entries that could not be decoded (read as misses); ``evictions``
    entries dropped for room, ``expirations`` entries dropped because their ttl ran out (memory);
    ``loads`` loader calls, with ``load_errors`` and ``load_timeouts``; ``refreshes`` background early
    refreshes, with ``refresh_errors``; ``latency_*`` the backend calls measured (seconds); ``entries``
    and ``size_bytes`` how much the backend holds, when it knows.
    """

    backend: str
    hits: int
    misses: int
    stale_served: int
    errors: int
    undecodable: int
    evictions: int
    expirations: int
    sets: int
    deletes: int
    loads: int
    load_errors: int
    load_timeouts: int
    refreshes: int
    refresh_errors: int
    latency_count: int
    latency_total: float
    latency_max: float
    entries: int | None = None
    size_bytes: int | None = None

    @property
    def hit_ratio(self) -> float:
        """Hits divided by reads (0.0 before the first read)."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    @property
    def latency_avg(self) -> float:
        """Mean seconds per measured backend call (0.0 when none was measured)."""
        return self.latency_total / self.latency_count if self.latency_count else 0.0


@dataclass(frozen=True, slots=True)
class CacheHealth:
    """The answer of :meth:`Cache.health`: whether the backend answered, how fast, and the stats."""

    healthy: bool
    backend: str
    latency: float | None
    detail: str
    stats: CacheStats
