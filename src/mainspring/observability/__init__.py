"""Observability: health checks, Prometheus metrics and OpenTelemetry tracing (extra ``otel``).

::

    from mainspring.observability import HealthChecker, MetricsRegistry, database_check, disk_check

    metrics = MetricsRegistry()
    health = HealthChecker(metrics=metrics)
    health.add(database_check(db))
    health.add(disk_check("/var/lib/app"))

    report = await health.ready()        # report.status, report.http_status (200/503), report.to_dict()
    metrics.record_http("GET", "/users/{user_id}", 200, 0.012)
    body, content_type = metrics.render()  # for GET /metrics

Health statuses are ``pass``/``warn``/``fail`` (the IETF health-check draft); metrics follow the RED
method (rate, errors, duration) and read the subsystems' own stats at scrape time. See
``docs/observability.md``.
"""

from mainspring.observability._asgi import metrics_app, route_template
from mainspring.observability._checks import (
    HEALTH_PROBE_TOPIC,
    broker_check,
    cache_check,
    database_check,
    disk_check,
    outbox_check,
)
from mainspring.observability._collector import BROKER_OUTCOMES, SubsystemCollector
from mainspring.observability._health import (
    HEALTH_CONTENT_TYPE,
    CheckReport,
    CheckResult,
    HealthCheck,
    HealthChecker,
    HealthReport,
    HealthStatus,
)
from mainspring.observability._metrics import (
    HTTP_METHODS,
    MESSAGE_OUTCOMES,
    STATUS_VALUES,
    UNMATCHED_ROUTE,
    MetricsRegistry,
    get_metrics,
    record_http,
    record_message,
    render_metrics,
    set_metrics,
)
from mainspring.observability._tracing import (
    INSTRUMENTATIONS,
    AttributeValue,
    TracedSpan,
    Tracing,
    auto_instrument,
    excluded_urls_regex,
    init_tracing,
    shutdown_tracing,
    traced,
    tracing_enabled,
    uninstrument,
)

__all__ = [
    "BROKER_OUTCOMES",
    "HEALTH_CONTENT_TYPE",
    "HEALTH_PROBE_TOPIC",
    "HTTP_METHODS",
    "INSTRUMENTATIONS",
    "MESSAGE_OUTCOMES",
    "STATUS_VALUES",
    "UNMATCHED_ROUTE",
    "AttributeValue",
    "CheckReport",
    "CheckResult",
    "HealthCheck",
    "HealthChecker",
    "HealthReport",
    "HealthStatus",
    "MetricsRegistry",
    "SubsystemCollector",
    "TracedSpan",
    "Tracing",
    "auto_instrument",
    "broker_check",
    "cache_check",
    "database_check",
    "disk_check",
    "excluded_urls_regex",
    "get_metrics",
    "init_tracing",
    "metrics_app",
    "outbox_check",
    "record_http",
    "record_message",
    "render_metrics",
    "route_template",
    "set_metrics",
    "shutdown_tracing",
    "traced",
    "tracing_enabled",
    "uninstrument",
]
