"""A Prometheus collector that reads the subsystems' own stats at scrape time.

The database pool, caches, brokers and outbox relays already count what they do (``pool_stats()``,
``stats()``, ``stats``); this collector turns those snapshots into metric families when Prometheus
scrapes, so the subsystems need no Prometheus code. The outbox backlog needs a query, which a
synchronous collector cannot await: :meth:`SubsystemCollector.refresh` reads it before a scrape and
``collect`` reports the last reading.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from mainspring.errors import ConfigError, MainspringError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from mainspring.cache import Cache
    from mainspring.db import Database
    from mainspring.events import OutboxBacklog, OutboxRelay
    from mainspring.messaging import Broker

__all__ = ["BROKER_OUTCOMES", "SubsystemCollector"]

log = get_logger("mainspring.observability")

#: ``BrokerStats`` field → ``outcome`` label of ``messaging_broker_deliveries_total``.
BROKER_OUTCOMES: Final = {
    "handled": "handled",
    "failed": "failed",
    "retried": "retried",
    "dead_lettered": "dead_lettered",
    "duplicates_skipped": "duplicate",
    "released": "released",
}
_CACHE_COUNTERS: Final = (
    "hits",
    "misses",
    "stale_served",
    "errors",
    "undecodable",
    "evictions",
    "expirations",
    "sets",
    "deletes",
    "loads",
    "load_errors",
    "load_timeouts",
    "refreshes",
    "refresh_errors",
)
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def _check_name(kind: str, name: str, taken: Mapping[str, object], *, replace: bool = False) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a {kind} name must be 1-100 letters, digits, '_', '.', ':' or '-', got {name!r}")
    if name in taken and not replace:
        raise ConfigError(f"a {kind} named {name!r} is already collected; give each one its own name")
    return name


class SubsystemCollector:
    """Export the stats of databases, caches, brokers and outbox relays as Prometheus metrics.

    Add components with :meth:`add_database`, :meth:`add_cache`, :meth:`add_broker` and
    :meth:`add_outbox_relay`; each is labelled by its name. Values are read at scrape time. A name
    taken already is refused, unless ``replace=True`` (what ``create_app`` passes: the newest app's
    components win).
    """

    def __init__(self) -> None:
        """Start with nothing to collect."""
        self._databases: dict[str, Database] = {}
        self._caches: dict[str, Cache] = {}
        self._brokers: dict[str, Broker] = {}
        self._relays: dict[str, OutboxRelay] = {}
        self._backlogs: dict[str, OutboxBacklog] = {}

    def add_database(self, database: Database, name: str | None = None, *, replace: bool = False) -> None:
        """Collect ``database.pool_stats()`` under ``database=name`` (the database's own name by default)."""
        key = _check_name("database", name or database.name, self._databases, replace=replace)
        self._databases[key] = database

    def add_cache(self, cache: Cache, name: str = "default", *, replace: bool = False) -> None:
        """Collect ``cache.stats()`` under ``cache=name``."""
        self._caches[_check_name("cache", name, self._caches, replace=replace)] = cache

    def add_broker(self, broker: Broker, name: str = "default", *, replace: bool = False) -> None:
        """Collect ``broker.stats`` under ``broker=name``."""
        self._brokers[_check_name("broker", name, self._brokers, replace=replace)] = broker

    def add_outbox_relay(self, relay: OutboxRelay, name: str = "default", *, replace: bool = False) -> None:
        """Collect ``relay.stats`` and, after each :meth:`refresh`, its backlog under ``relay=name``."""
        self._relays[_check_name("relay", name, self._relays, replace=replace)] = relay

    async def refresh(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a scrape owns its deadline
        """Read every relay's backlog (in parallel, each within ``timeout``) for the next :meth:`collect`.

        A relay whose backlog cannot be read is logged and left out of ``outbox_pending`` and
        ``outbox_oldest_age_seconds`` until a read succeeds: a stale value would look healthy.
        """
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"refresh timeout must be > 0 seconds, got {timeout!r}")
        names = list(self._relays)
        results = await asyncio.gather(
            *(self._read_backlog(self._relays[name], timeout) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, MainspringError | TimeoutError | OSError):
                    raise result
                self._backlogs.pop(name, None)
                log.warning("outbox backlog unreadable for metrics", relay=name, error=repr(result)[:300])
            else:
                self._backlogs[name] = result

    @staticmethod
    async def _read_backlog(relay: OutboxRelay, seconds: float) -> OutboxBacklog:
        async with asyncio.timeout(seconds):
            return await relay.backlog()

    def describe(self) -> list[Metric]:
        """Return the metric families (without samples) this collector emits."""
        return list(self._families(collect=False))

    def collect(self) -> Iterator[Metric]:
        """Read every component's stats now and yield them as metric families."""
        yield from self._families(collect=True)

    def _families(self, *, collect: bool) -> Iterator[Metric]:
        yield from self._database_families(collect)
        yield from self._cache_families(collect)
        yield from self._broker_families(collect)
        yield from self._outbox_families(collect)

    def _database_families(self, collect: bool) -> Iterator[Metric]:
        labels = ["database"]
        gauges = {
            "size": GaugeMetricFamily("db_pool_size", "Connections the pool keeps.", labels=labels),
            "max_overflow": GaugeMetricFamily(
                "db_pool_max_overflow", "Connections the pool may open beyond its size.", labels=labels
            ),
            "open": GaugeMetricFamily("db_pool_connections_open", "Open connections.", labels=labels),
            "checked_out": GaugeMetricFamily(
                "db_pool_connections_in_use", "Connections checked out of the pool.", labels=labels
            ),
            "overflow": GaugeMetricFamily(
                "db_pool_overflow", "Connections open beyond the size.", labels=labels
            ),
        }
        counters = {
            "waits": CounterMetricFamily(
                "db_pool_waits", "Checkouts that found every connection busy and waited.", labels=labels
            ),
            "timeouts": CounterMetricFamily(
                "db_pool_timeouts", "Checkouts that gave up after the pool timeout.", labels=labels
            ),
        }
        if collect:
            for name, database in self._databases.items():
                stats = database.pool_stats()
                for attr, gauge in gauges.items():
                    gauge.add_metric([name], getattr(stats, attr))
                for attr, counter in counters.items():
                    counter.add_metric([name], getattr(stats, attr))
        yield from gauges.values()
        yield from counters.values()

    def _cache_families(self, collect: bool) -> Iterator[Metric]:
        labels = ["cache", "backend"]
        counters = {
            attr: CounterMetricFamily(f"cache_{attr}", f"Cache {attr.replace('_', ' ')}.", labels=labels)
            for attr in _CACHE_COUNTERS
        }
        entries = GaugeMetricFamily("cache_entries", "Entries the cache holds (when known).", labels=labels)
        size = GaugeMetricFamily("cache_size_bytes", "Bytes the cache holds (when known).", labels=labels)
        latency = SummaryMetricFamily(
            "cache_backend_latency_seconds", "Time of the backend calls the cache measured.", labels=labels
        )
        if collect:
            for name, cache in self._caches.items():
                stats = cache.stats()
                key = [name, stats.backend]
                for attr, counter in counters.items():
                    counter.add_metric(key, getattr(stats, attr))
                if stats.entries is not None:
                    entries.add_metric(key, stats.entries)
                if stats.size_bytes is not None:
                    size.add_metric(key, stats.size_bytes)
                latency.add_metric(key, count_value=stats.latency_count, sum_value=stats.latency_total)
        yield from counters.values()
        yield from (entries, size, latency)

    def _broker_families(self, collect: bool) -> Iterator[Metric]:
        published = CounterMetricFamily(
            "messaging_broker_published", "Messages the broker published.", labels=["broker"]
        )
        deliveries = CounterMetricFamily(
            "messaging_broker_deliveries",
            "Deliveries the broker's subscribers settled, by outcome.",
            labels=["broker", "outcome"],
        )
        if collect:
            for name, broker in self._brokers.items():
                stats = broker.stats
                published.add_metric([name], stats.published)
                for field in fields(stats):
                    outcome = BROKER_OUTCOMES.get(field.name)
                    if outcome is not None:
                        deliveries.add_metric([name, outcome], getattr(stats, field.name))
        yield from (published, deliveries)

    def _outbox_families(self, collect: bool) -> Iterator[Metric]:
        labels = ["relay"]
        published = CounterMetricFamily("outbox_published", "Outbox rows the relay published.", labels=labels)
        failures = CounterMetricFamily("outbox_relay_failures", "Relay batches that failed.", labels=labels)
        pending = GaugeMetricFamily("outbox_pending", "Outbox rows waiting to be published.", labels=labels)
        oldest = GaugeMetricFamily(
            "outbox_oldest_age_seconds", "Age of the oldest pending outbox row.", labels=labels
        )
        if collect:
            for name, relay in self._relays.items():
                published.add_metric([name], relay.stats.published)
                failures.add_metric([name], relay.stats.failures)
                backlog = self._backlogs.get(name)
                if backlog is not None:
                    pending.add_metric([name], backlog.pending)
                    oldest.add_metric([name], backlog.oldest_age)
        yield from (published, failures, pending, oldest)
