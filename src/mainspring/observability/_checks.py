"""Built-in health checks: database, cache, broker, outbox lag and disk space.

Each factory returns a :class:`HealthCheck` for :meth:`HealthChecker.add`. They only read what the
subsystems already offer (``Database.ping``, ``Cache.health``, ``Transport.browse``,
``OutboxRelay.backlog``), so the subsystems know nothing of health checks.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mainspring.errors import ConfigError
from mainspring.observability._health import CheckResult, HealthCheck

if TYPE_CHECKING:
    import os

    from mainspring.cache import Cache
    from mainspring.db import Database
    from mainspring.events import OutboxRelay
    from mainspring.messaging import Broker

__all__ = [
    "HEALTH_PROBE_TOPIC",
    "broker_check",
    "cache_check",
    "database_check",
    "disk_check",
    "outbox_check",
]

#: The dead-letter topic :func:`broker_check` browses when the broker has no subscriber.
HEALTH_PROBE_TOPIC = "mainspring.health.dlq"


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _ordered(what: str, warn: float | None, fail: float | None) -> None:
    if warn is not None and fail is not None and warn > fail:
        raise ConfigError(
            f"{what}: the warn threshold ({warn:g}) must not exceed the fail threshold ({fail:g})"
        )


def database_check(
    database: Database, *, name: str = "database", timeout: float = 2.0, critical: bool = True
) -> HealthCheck:
    """Check that ``database`` answers ``SELECT 1`` (through its pool) within ``timeout`` seconds.

    The ping gets ``timeout`` and the check a little more, so a slow database fails with the ping's
    own message (naming the database) rather than a bare timeout.
    """

    async def probe() -> CheckResult:
        round_trip = await database.ping(timeout=timeout)
        pool = database.pool_stats()
        return CheckResult.passed(
            round_trip=round(round_trip, 6), pool_in_use=pool.checked_out, pool_open=pool.open
        )

    if not _positive("timeout", timeout):
        raise ConfigError(f"database_check timeout must be > 0 seconds, got {timeout!r}")
    return HealthCheck(name, probe, timeout=timeout + 0.25, critical=critical)


def cache_check(
    cache: Cache, *, name: str = "cache", timeout: float = 1.0, critical: bool = False
) -> HealthCheck:
    """Check the cache's backend with one round trip (``Cache.health()``).

    Not critical by default: a cache that cannot reach its backend degrades to misses, so the service
    stays correct, only slower. A healthy cache with a remark (a multi-level cache whose invalidation
    channel is down) is ``warn``.
    """

    async def probe() -> CheckResult:
        health = await cache.health()
        stats = health.stats
        observed: dict[str, float | int | str] = {
            "backend": health.backend,
            "hit_ratio": round(stats.hit_ratio, 4),
        }
        if not health.healthy:
            return CheckResult.failed(health.detail, **observed)
        if health.detail != "ok":
            return CheckResult.warned(health.detail, **observed)
        return CheckResult.passed(**observed)

    return HealthCheck(name, probe, timeout=timeout, critical=critical)


def broker_check(
    broker: Broker,
    *,
    name: str = "broker",
    probe_topic: str | None = None,
    timeout: float = 2.0,
    critical: bool = True,
) -> HealthCheck:
    """Check that the broker's transport is started and answers: it browses one record of a topic.

    A browse is a real round trip on every transport and consumes nothing, and a transport that is
    not started refuses it. The topic is ``probe_topic``, else the dead-letter topic of the broker's
    first subscriber (which the transport declared when the subscriber started), else
    :data:`HEALTH_PROBE_TOPIC`. Dead-letter topics because RabbitMQ can browse only those; there, and
    on Kafka, browsing a topic that does not exist yet creates it (an empty queue or topic), so pass a
    ``probe_topic`` that exists when that matters.
    """
    if probe_topic is not None:
        from mainspring.messaging.base import check_topic

        check_topic(probe_topic)

    def topic() -> str:
        if probe_topic is not None:
            return probe_topic
        subscribers = broker.subscribers()
        if subscribers:
            from mainspring.messaging import dead_letter_topic

            return dead_letter_topic(subscribers[0].topic)
        return HEALTH_PROBE_TOPIC

    async def probe() -> CheckResult:
        await broker.transport.browse(topic(), limit=1)
        stats = broker.stats
        return CheckResult.passed(
            transport=type(broker.transport).__name__,
            published=stats.published,
            dead_lettered=stats.dead_lettered,
        )

    return HealthCheck(name, probe, timeout=timeout, critical=critical)


def outbox_check(
    relay: OutboxRelay,
    *,
    name: str = "outbox",
    warn_pending: int | None = 1_000,
    fail_pending: int | None = 10_000,
    warn_age: float | None = 60.0,
    fail_age: float | None = 300.0,
    timeout: float = 2.0,
    critical: bool = True,
) -> HealthCheck:
    """Check the outbox backlog: ``warn``/``fail`` above the pending-count or oldest-age thresholds.

    ``None`` turns a threshold off. The backlog grows when the relay or the broker stalls; each row is
    still safe in the database, so a service whose only problem is the backlog may prefer
    ``critical=False`` (it then warns instead of leaving the load balancer).
    """
    thresholds = {
        "warn_pending": _positive("warn_pending", warn_pending),
        "fail_pending": _positive("fail_pending", fail_pending),
        "warn_age": _positive("warn_age", warn_age),
        "fail_age": _positive("fail_age", fail_age),
    }
    _ordered("outbox_check pending", thresholds["warn_pending"], thresholds["fail_pending"])
    _ordered("outbox_check age", thresholds["warn_age"], thresholds["fail_age"])

    def above(value: float, limit: float | None) -> bool:
        return limit is not None and value > limit

    async def probe() -> CheckResult:
        backlog = await relay.backlog()
        observed: dict[str, float | int | str] = {
            "pending": backlog.pending,
            "oldest_age": round(backlog.oldest_age, 3),
        }
        text = f"{backlog.pending} pending, oldest {backlog.oldest_age:.1f} s"
        if above(backlog.pending, thresholds["fail_pending"]) or above(
            backlog.oldest_age, thresholds["fail_age"]
        ):
            return CheckResult.failed(f"outbox backlog too large: {text}", **observed)
        if above(backlog.pending, thresholds["warn_pending"]) or above(
            backlog.oldest_age, thresholds["warn_age"]
        ):
            return CheckResult.warned(f"outbox backlog growing: {text}", **observed)
        return CheckResult.passed(**observed)

    return HealthCheck(name, probe, timeout=timeout, critical=critical)


def disk_check(
    path: str | os.PathLike[str] = ".",
    *,
    name: str = "disk",
    warn_free_ratio: float | None = 0.10,
    fail_free_ratio: float | None = 0.05,
    min_free_bytes: int | None = None,
    timeout: float = 1.0,
    critical: bool = True,
) -> HealthCheck:
    """Check the free space of the file system holding ``path`` (``shutil.disk_usage``).

    ``fail`` when the free fraction is below ``fail_free_ratio`` or fewer than ``min_free_bytes`` are
    free, ``warn`` below ``warn_free_ratio``. The call runs in a thread: a hung network mount then
    fails the check by its timeout instead of blocking the event loop.
    """
    where = Path(path)
    warn = _positive("warn_free_ratio", warn_free_ratio)
    fail = _positive("fail_free_ratio", fail_free_ratio)
    floor = _positive("min_free_bytes", min_free_bytes)
    if (warn is not None and warn > 1) or (fail is not None and fail > 1):
        raise ConfigError("disk_check ratios are fractions between 0 and 1")
    if warn is not None and fail is not None and warn < fail:
        raise ConfigError(
            f"disk_check: warn_free_ratio ({warn:g}) must not be below fail_free_ratio ({fail:g})"
        )

    async def probe() -> CheckResult:
        usage = await asyncio.to_thread(shutil.disk_usage, where)
        ratio = usage.free / usage.total if usage.total else 0.0
        observed: dict[str, float | int | str] = {"free_bytes": usage.free, "free_ratio": round(ratio, 4)}
        text = f"{usage.free / 2**30:.2f} GiB free ({ratio:.1%}) on {str(where)!r}"
        if (fail is not None and ratio < fail) or (floor is not None and usage.free < floor):
            return CheckResult.failed(f"disk almost full: {text}", **observed)
        if warn is not None and ratio < warn:
            return CheckResult.warned(f"disk filling up: {text}", **observed)
        return CheckResult.passed(text, **observed)

    return HealthCheck(name, probe, timeout=timeout, critical=critical)
