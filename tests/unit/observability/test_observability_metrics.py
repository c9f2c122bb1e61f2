"""MetricsRegistry: RED metric names and labels, route templates, the collector and /metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from mainspring.cache import MemoryCache
from mainspring.errors import ConfigError
from mainspring.messaging import Broker, create_broker
from mainspring.observability import (
    UNMATCHED_ROUTE,
    MetricsRegistry,
    metrics_app,
    route_template,
)


def _samples(metrics: MetricsRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_http_red_metrics_have_method_route_and_status_labels() -> None:
    metrics = MetricsRegistry()
    metrics.record_http("get", "/users/{user_id}", 200, 0.02)
    metrics.record_http("GET", "/users/{user_id}", 200, 0.3)
    metrics.record_http("BREW", "/coffee", 418, 0.001)
    get = metrics.registry.get_sample_value
    labels = {"method": "GET", "route": "/users/{user_id}", "status": "200"}
    assert get("http_requests_total", labels) == 2
    assert get("http_request_duration_seconds_count", labels) == 2
    assert get("http_request_duration_seconds_sum", labels) == pytest.approx(0.32)
    assert get("http_request_duration_seconds_bucket", {**labels, "le": "0.025"}) == 1
    assert get("http_requests_total", {"method": "other", "route": "/coffee", "status": "418"}) == 1


@pytest.mark.parametrize(
    "raw", ["/users/42", "/users/42/orders", "/search?q=x", "/o/0b9c2a4e-1f2d-4c3b-9a8e-1234"]
)
def test_record_http_refuses_a_raw_path(raw: str) -> None:
    with pytest.raises(ConfigError, match="route template"):
        MetricsRegistry().record_http("GET", raw, 200, 0.1)


def test_record_http_refuses_bad_status_and_durations() -> None:
    metrics = MetricsRegistry()
    with pytest.raises(ConfigError, match="status code"):
        metrics.record_http("GET", "/x", 99, 0.1)
    with pytest.raises(ConfigError, match="finite number"):
        metrics.record_http("GET", "/x", 200, float("nan"))


def test_message_red_metrics_have_topic_group_and_outcome_labels() -> None:
    metrics = MetricsRegistry()
    metrics.record_message("orders", "billing", "handled", 0.05)
    metrics.record_message("orders", "billing", "dead_lettered", 0.5)
    metrics.record_message("orders", "billing", "released")
    get = metrics.registry.get_sample_value
    for outcome in ("handled", "dead_lettered", "released"):
        labels = {"topic": "orders", "group": "billing", "outcome": outcome}
        assert get("messaging_messages_total", labels) == 1
    assert get("messaging_handler_duration_seconds_count", {"topic": "orders", "group": "billing"}) == 2
    with pytest.raises(ConfigError, match="unknown message outcome 'lost'"):
        metrics.record_message("orders", "billing", "lost")


def test_isolated_registries_do_not_share_values() -> None:
    one, two = MetricsRegistry(), MetricsRegistry()
    one.record_http("GET", "/a", 200, 0.1)
    labels = {"method": "GET", "route": "/a", "status": "200"}
    assert one.registry.get_sample_value("http_requests_total", labels) == 1
    assert two.registry.get_sample_value("http_requests_total", labels) is None


def test_exported_names_list_every_sample_name() -> None:
    names = MetricsRegistry().exported_names()
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "messaging_messages_total",
        "messaging_handler_duration_seconds_bucket",
        "health_check_status",
        "db_pool_connections_in_use",
        "cache_hits_total",
        "messaging_broker_deliveries_total",
        "outbox_pending",
        "outbox_oldest_age_seconds",
        "outbox_published_total",
    ):
        assert name in names


async def test_route_template_labels_a_fastapi_request_by_its_route() -> None:
    app = FastAPI()
    metrics = MetricsRegistry()

    @app.get("/users/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    async def measured(scope, receive, send):  # type: ignore[no-untyped-def]
        status = {}

        async def capture(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await app(scope, receive, capture)
        if scope["type"] == "http":
            metrics.record_http(scope["method"], route_template(scope), status["code"], 0.01)

    transport = httpx.ASGITransport(app=measured)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/users/7")).status_code == 200
        assert (await client.get("/users/8")).status_code == 200
        assert (await client.get("/nope/123")).status_code == 404
    samples = _samples(metrics)
    key = ("http_requests_total", (("method", "GET"), ("route", "/users/{user_id}"), ("status", "200")))
    assert samples[key] == 2
    missing = ("http_requests_total", (("method", "GET"), ("route", UNMATCHED_ROUTE), ("status", "404")))
    assert samples[missing] == 1
    assert not any("/users/7" in dict(labels).get("route", "") for _, labels in samples)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    made = create_broker(f"memory://{uuid.uuid4().hex}")
    await made.start()
    yield made
    await made.stop(drain_timeout=0)


async def test_collector_reads_cache_and_broker_stats_at_scrape_time(broker: Broker) -> None:
    metrics = MetricsRegistry()
    cache = MemoryCache()
    metrics.subsystems.add_cache(cache, "local")
    metrics.subsystems.add_broker(broker, "main")
    await cache.set("k", 1)
    await cache.get("k")
    await cache.get("absent")
    await broker.publish("orders", {"n": 1})
    get = metrics.registry.get_sample_value
    assert get("cache_hits_total", {"cache": "local", "backend": "memory"}) == 1
    assert get("cache_misses_total", {"cache": "local", "backend": "memory"}) == 1
    assert get("cache_entries", {"cache": "local", "backend": "memory"}) == 1
    assert get("messaging_broker_published_total", {"broker": "main"}) == 1
    assert get("messaging_broker_deliveries_total", {"broker": "main", "outcome": "dead_lettered"}) == 0
    await cache.get("k")
    assert get("cache_hits_total", {"cache": "local", "backend": "memory"}) == 2
    with pytest.raises(ConfigError, match="already collected"):
        metrics.subsystems.add_cache(cache, "local")


async def test_metrics_app_serves_the_exposition() -> None:
    metrics = MetricsRegistry()
    metrics.record_http("GET", "/a", 200, 0.1)
    transport = httpx.ASGITransport(app=metrics_app(metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
        refused = await client.post("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'http_requests_total{method="GET",route="/a",status="200"} 1.0' in response.text
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_render_returns_text_and_content_type() -> None:
    body, content_type = MetricsRegistry().render()
    assert b"# TYPE http_requests_total counter" in body
    assert content_type.startswith("text/plain")


def test_a_missing_multiprocess_dir_is_refused(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="multiprocess directory"):
        MetricsRegistry(multiprocess_dir=f"{tmp_path}/absent")


def test_registering_twice_in_one_registry_is_a_config_error() -> None:
    metrics = MetricsRegistry()
    with pytest.raises(ConfigError, match="already holds them"):
        MetricsRegistry(metrics.registry)


def test_module_helpers_use_the_process_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from mainspring.observability import (
        _metrics,
        get_metrics,
        record_http,
        record_message,
        render_metrics,
        set_metrics,
    )

    monkeypatch.setattr(_metrics, "_default", None)
    isolated = MetricsRegistry()
    set_metrics(isolated)
    assert get_metrics() is isolated
    record_http("POST", "/orders", 201, 0.05)
    record_message("orders", "billing", "failed")
    body, _ = render_metrics()
    assert b'http_requests_total{method="POST",route="/orders",status="201"} 1.0' in body
    assert b'messaging_messages_total{group="billing",outcome="failed",topic="orders"} 1.0' in body
    with pytest.raises(ConfigError, match="needs a MetricsRegistry"):
        set_metrics(object())  # type: ignore[arg-type]
