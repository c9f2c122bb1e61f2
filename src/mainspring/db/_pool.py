"""Connection pool metrics: a queue pool that counts how often callers had to wait for a connection."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool

__all__ = ["PoolCounters", "PoolStats", "measured_pool_class", "pool_stats"]


@dataclass(slots=True)
class PoolCounters:
    """Running totals kept by a measured pool (they survive the pool being recreated on dispose)."""

    waits: int = 0
    timeouts: int = 0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a database's connection pool.

    ``open`` connections are ``checked_out`` (in use) or idle; ``overflow`` counts those opened beyond
    ``size`` under load. ``waits`` counts checkouts that found every connection busy and queued;
    ``timeouts`` those that gave up after ``pool_timeout``.
    """

    size: int
    max_overflow: int
    open: int
    checked_out: int
    overflow: int
    waits: int
    timeouts: int


def measured_pool_class(counters: PoolCounters) -> type[AsyncAdaptedQueuePool]:
    """Return an :class:`AsyncAdaptedQueuePool` subclass that records waits and timeouts in ``counters``."""

    class MeasuredQueuePool(AsyncAdaptedQueuePool):
        def _do_get(self) -> ConnectionPoolEntry:
            # The same test QueuePool uses to decide it must block: no idle connection, no overflow left.
            if -1 < self._max_overflow <= self._overflow and self._pool.empty():
                counters.waits += 1
            try:
                return super()._do_get()
            except sa_exc.TimeoutError:
                counters.timeouts += 1
                raise

    return MeasuredQueuePool


def pool_stats(pool: Pool | None, counters: PoolCounters, *, size: int, max_overflow: int) -> PoolStats:
    """Take a :class:`PoolStats` snapshot of ``pool`` (``None``: not started, everything zero)."""
    if not isinstance(pool, AsyncAdaptedQueuePool):
        # Not started, or an in-memory SQLite database on its single static connection.
        open_ = 0 if pool is None else 1
        return PoolStats(size, max_overflow, open_, 0, 0, counters.waits, counters.timeouts)
    checked_in, checked_out = pool.checkedin(), pool.checkedout()
    return PoolStats(
        size=size,
        max_overflow=max_overflow,
        open=checked_in + checked_out,
        checked_out=checked_out,
        overflow=max(0, pool.overflow()),
        waits=counters.waits,
        timeouts=counters.timeouts,
    )
