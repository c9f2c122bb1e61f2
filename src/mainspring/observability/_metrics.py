"""Prometheus metrics: the RED metrics of HTTP and message handlers, health gauges, and the exposition.

:class:`MetricsRegistry` owns one :class:`~prometheus_client.CollectorRegistry` and the metric objects
registered in it, so a test can make its own isolated registry; :func:`get_metrics` returns the
process-wide one (over ``prometheus_client.REGISTRY``) that the module-level helpers use.

Several worker processes: prometheus-client switches every metric to memory-mapped files when
``PROMETHEUS_MULTIPROC_DIR`` is set before it is imported (its own rule). :meth:`MetricsRegistry.render`
then aggregates the files of every worker with ``MultiProcessCollector`` (counters and histograms
summed). The one gauge, ``health_check_status``, uses ``livemin``: the worst status any live worker saw.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from mainspring.errors import ConfigError
from mainspring.observability._collector import SubsystemCollector

if TYPE_CHECKING:
    from mainspring.observability._health import HealthReport

__all__ = [
    "HTTP_METHODS",
    "MESSAGE_OUTCOMES",
    "STATUS_VALUES",
    "UNMATCHED_ROUTE",
    "MetricsRegistry",
    "get_metrics",
    "record_http",
    "record_message",
    "render_metrics",
    "set_metrics",
]

#: Methods kept as the ``method`` label; any other becomes ``"other"`` (a client picks the method).
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: The ``route`` label of a request that matched no route (404 scans must not grow the series count).
UNMATCHED_ROUTE: Final = "unmatched"
#: The ``outcome`` values of ``messaging_messages_total``.
MESSAGE_OUTCOMES: Final = frozenset(
    {"handled", "failed", "retried", "dead_lettered", "duplicate", "released", "invalid"}
)
#: The value ``health_check_status`` takes for each status (lower is worse, so ``livemin`` keeps the worst).
STATUS_VALUES: Final = {"pass": 1.0, "warn": 0.5, "fail": 0.0}

# A raw path has digits, UUIDs or query strings in it; a template has ``{name}`` placeholders instead.
_RAW_SEGMENT = re.compile(r"/\d+(?:/|$)|[?#]|/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-")


class MetricsRegistry:
    """The metric objects of one service in one :class:`~prometheus_client.CollectorRegistry`.

    ``MetricsRegistry()`` makes an isolated registry (tests); :func:`get_metrics` returns the process
    default. ``multiprocess_dir`` is where prometheus-client keeps the worker files when it runs in
    multiprocess mode; :meth:`render` then reports the sum over every worker. ``subsystems`` reads the
    pools, caches, brokers and outbox relays added to it at scrape time.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        multiprocess_dir: str | os.PathLike[str] | None = None,
        http_buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
        handler_buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> None:
        """Register the metrics in ``registry`` (a new, isolated one by default)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir is not None else None
        if self.multiprocess_dir is not None and not self.multiprocess_dir.is_dir():
            raise ConfigError(
                f"the Prometheus multiprocess directory {str(self.multiprocess_dir)!r} does not exist; "
                "create it (empty) before the workers start"
            )
        try:
            self.http_requests = Counter(
                "http_requests",
                "HTTP requests served, by method, route template and status code.",
                ["method", "route", "status"],
                registry=self.registry,
            )
            self.http_request_duration = Histogram(
                "http_request_duration_seconds",
                "Time to serve an HTTP request, by method, route template and status code.",
                ["method", "route", "status"],
                buckets=http_buckets,
                registry=self.registry,
            )
            self.messages = Counter(
                "messaging_messages",
                "Messages a handler finished with, by topic, consumer group and outcome.",
                ["topic", "group", "outcome"],
                registry=self.registry,
            )
            self.handler_duration = Histogram(
                "messaging_handler_duration_seconds",
                "Time a message handler ran, by topic and consumer group.",
                ["topic", "group"],
                buckets=handler_buckets,
                registry=self.registry,
            )
            self.health_status = Gauge(
                "health_check_status",
                "The last status of each health check: 1 pass, 0.5 warn, 0 fail.",
                ["check"],
                multiprocess_mode="livemin",
                registry=self.registry,
            )
            self.subsystems = SubsystemCollector()
            self._http_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
            self.registry.register(self.subsystems)
        except ValueError as exc:
            # prometheus-client refuses a second metric of the same name in one registry.
            raise ConfigError(
                f"cannot register the mainspring metrics: {exc}; the registry already holds them "
                "(use get_metrics() for the process registry, or MetricsRegistry() for a fresh one)"
            ) from exc

    # --- recording ------------------------------------------------------------------------------

    def record_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and observe its duration.

        ``route`` is the route *template* (``/users/{user_id}``), never the raw path: a raw path makes a
        series per id. Use :data:`UNMATCHED_ROUTE` when no route matched. An unknown ``method`` is
        counted as ``other``.
        """
        series = self._http_series.get((method, route, status))
        if series is None:
            series = self._new_http_series(method, route, status)
        series[0].inc()
        series[1].observe(_seconds(seconds))

    def _new_http_series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        # Checked once per (method, route, status); later requests find the children in the dict.
        if not isinstance(route, str) or not route or _RAW_SEGMENT.search(route):
            raise ConfigError(
                f"record_http needs a route template like '/users/{{user_id}}', got {route!r}; "
                f"pass the matched route's template (or {UNMATCHED_ROUTE!r}), never the raw path"
            )
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError(f"record_http needs an HTTP status code 100-599, got {status!r}")
        verb = method.upper() if isinstance(method, str) else ""
        labels = (verb if verb in HTTP_METHODS else "other", route, str(status))
        series = (self.http_requests.labels(*labels), self.http_request_duration.labels(*labels))
        self._http_series[(method, route, status)] = series
        return series

    def record_message(self, topic: str, group: str, outcome: str, seconds: float | None = None) -> None:
        """Count one message a handler of ``group`` on ``topic`` finished with ``outcome``.

        ``outcome`` is one of :data:`MESSAGE_OUTCOMES`; ``seconds`` (the handler's run time, when it
        ran) goes into ``messaging_handler_duration_seconds``.
        """
        if outcome not in MESSAGE_OUTCOMES:
            raise ConfigError(
                f"unknown message outcome {outcome!r}; use one of {', '.join(sorted(MESSAGE_OUTCOMES))}"
            )
        self.messages.labels(topic, group, outcome).inc()
        if seconds is not None:
            self.handler_duration.labels(topic, group).observe(_seconds(seconds))

    def record_health(self, report: HealthReport) -> None:
        """Set ``health_check_status`` for every check in ``report``."""
        for check in report.checks:
            self.health_status.labels(check.name).set(STATUS_VALUES[check.status.value])

    # --- exposition -----------------------------------------------------------------------------

    async def refresh(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a scrape owns its deadline
        """Read what needs a query before a scrape (the outbox backlogs), each within ``timeout``."""
        await self.subsystems.refresh(timeout)

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text of every metric and its content type, for a ``/metrics`` response.

        In multiprocess mode the counters, histograms and gauges are the aggregate of every worker's
        files; the subsystem metrics are this process's.
        """
        return generate_latest(self._exposed()), CONTENT_TYPE_LATEST

    def _exposed(self) -> CollectorRegistry:
        if self.multiprocess_dir is None:
            return self.registry
        # The prometheus-client recipe: a fresh registry that reads the worker files, never the
        # registry the live metrics write through (that would count this worker twice).
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        registry.register(self.subsystems)
        return registry

    def mark_process_dead(self, pid: int) -> None:
        """Forget the live gauges of worker ``pid`` (call it from the server's child-exit hook).

        Counters and histograms of a dead worker stay in the sum, as Prometheus expects of counters.
        Does nothing outside multiprocess mode.
        """
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(pid, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]

    def exported_names(self) -> frozenset[str]:
        """Return every sample name :meth:`render` can emit (``http_requests_total``, ``..._bucket``).

        Dashboards and alert rules are checked against it.
        """
        names: set[str] = set()
        for family in [*self.registry.collect(), *self.subsystems.describe()]:
            names.update(_sample_names(family.name, family.type))
        return frozenset(names)


def _sample_names(name: str, kind: str) -> list[str]:
    if kind == "counter":
        return [f"{name}_total"]
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
    if kind == "summary":
        return [name, f"{name}_sum", f"{name}_count"]
    return [name]


def _seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ConfigError(f"a duration must be a finite number of seconds, got {seconds!r}")
    return max(0.0, float(seconds))


# --- the process default ----------------------------------------------------------------------------

_default: MetricsRegistry | None = None


def get_metrics() -> MetricsRegistry:
    """Return the process-wide :class:`MetricsRegistry`, over ``prometheus_client.REGISTRY``.

    Made on first use. Its ``multiprocess_dir`` is ``PROMETHEUS_MULTIPROC_DIR``: prometheus-client
    decides multiprocess mode from that variable alone, so the exposition must follow the same one.
    """
    global _default
    if _default is None:
        from prometheus_client import REGISTRY

        _default = MetricsRegistry(REGISTRY, multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return _default


def set_metrics(metrics: MetricsRegistry) -> None:
    """Make ``metrics`` the process-wide registry :func:`get_metrics` and the helpers use."""
    global _default
    if not isinstance(metrics, MetricsRegistry):
        raise ConfigError(f"set_metrics needs a MetricsRegistry, got {type(metrics).__name__}")
    _default = metrics


def record_http(method: str, route: str, status: int, seconds: float) -> None:
    """Record one HTTP request in the process-wide registry (see :meth:`MetricsRegistry.record_http`)."""
    get_metrics().record_http(method, route, status, seconds)


def record_message(topic: str, group: str, outcome: str, seconds: float | None = None) -> None:
    """Record one handled message in the process-wide registry (see ``MetricsRegistry.record_message``)."""
    get_metrics().record_message(topic, group, outcome, seconds)


def render_metrics(metrics: MetricsRegistry | None = None) -> tuple[bytes, str]:
    """Return the exposition text and content type of ``metrics`` (the process-wide registry by default)."""
    return (metrics or get_metrics()).render()
