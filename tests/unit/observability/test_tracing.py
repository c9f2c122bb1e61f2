"""Tracing: spans, nesting, sampling, excluded routes, ids in log records, FastAPI, OTLP export."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import fastapi
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from mainspring.config import Settings
from mainspring.context import bind_context, format_traceparent, get_context
from mainspring.errors import ConfigError, MissingDependencyError
from mainspring.logging import get_logger
from mainspring.observability._tracing import (
    Tracing,
    auto_instrument,
    excluded_urls_regex,
    init_tracing,
    shutdown_tracing,
    traced,
    tracing_enabled,
)
from mainspring.testing import capture_logs

log = get_logger("tests.tracing")


def tracing_settings(**tracing: Any) -> Settings:
    return Settings(
        service_name="orders", version="1.2.3", profile="test", tracing={"enabled": True, **tracing}
    )


@pytest.fixture(autouse=True)
def _no_tracing_left() -> Iterator[None]:
    yield
    shutdown_tracing()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    init_tracing(tracing_settings(), exporter=exporter)
    return exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_traced_block_creates_a_span_with_attributes_and_resource(spans: InMemorySpanExporter) -> None:
    with traced("orders.price", attributes={"items": 3}) as span:
        span.set_attribute("total", 42.5)
        span.add_event("priced")
    (finished,) = spans.get_finished_spans()
    assert finished.name == "orders.price"
    assert finished.attributes == {"items": 3, "total": 42.5}
    assert [event.name for event in finished.events] == ["priced"]
    resource = finished.resource.attributes
    assert resource["service.name"] == "orders"
    assert resource["service.version"] == "1.2.3"
    assert resource["deployment.environment.name"] == "test"


async def test_decorated_functions_nest_sync_inside_async(spans: InMemorySpanExporter) -> None:
    @traced("inner")
    def inner(x: int) -> int:
        return x * 2

    @traced()
    async def outer(x: int) -> int:
        return inner(x) + 1

    assert await outer(20) == 41
    named = by_name(spans)
    outer_name = f"{__name__}.test_decorated_functions_nest_sync_inside_async.<locals>.outer"
    assert set(named) == {"inner", outer_name}
    parent = named[outer_name]
    child = named["inner"]
    assert parent.parent is None
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


def test_an_escaping_exception_is_recorded_and_marks_the_span_failed(spans: InMemorySpanExporter) -> None:
    @traced("charge")
    def charge() -> None:
        raise ValueError("card declined")

    with pytest.raises(ValueError, match="card declined"):
        charge()
    (finished,) = spans.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert [event.name for event in finished.events] == ["exception"]
    assert finished.events[0].attributes is not None
    assert finished.events[0].attributes["exception.message"] == "card declined"


def test_sample_ratio_zero_records_no_span_but_logs_still_carry_ids() -> None:
    exporter = InMemorySpanExporter()
    init_tracing(tracing_settings(sample_ratio=0.0), exporter=exporter)
    with capture_logs() as logs, traced("dropped") as span:
        log.info("inside")
    assert not span.is_recording
    assert exporter.get_finished_spans() == ()
    assert logs[0]["trace_id"] == span.trace_id


def test_log_records_carry_the_active_span_ids_and_lose_them_after(spans: InMemorySpanExporter) -> None:
    with capture_logs() as logs:
        with traced("outer") as outer:
            log.info("in outer")
            with traced("inner") as inner:
                log.info("in inner")
            log.info("back in outer")
        log.info("outside")
    assert [(r["event"], r.get("trace_id"), r.get("span_id")) for r in logs] == [
        ("in outer", outer.trace_id, outer.span_id),
        ("in inner", outer.trace_id, inner.span_id),
        ("back in outer", outer.trace_id, outer.span_id),
        ("outside", None, None),
    ]


def test_ids_bound_before_a_span_come_back_after_it(spans: InMemorySpanExporter) -> None:
    incoming_trace, incoming_span = "a" * 32, "b" * 16
    with bind_context(correlation_id="c-1", trace_id=incoming_trace, span_id=incoming_span):
        with traced("work"):
            inside = get_context()
        after = get_context()
    assert inside.correlation_id == "c-1"
    assert inside.trace_id != incoming_trace  # no OpenTelemetry parent: a new trace
    assert (after.trace_id, after.span_id, after.correlation_id) == (incoming_trace, incoming_span, "c-1")


def test_disabled_tracing_is_a_no_op() -> None:
    handle = init_tracing(Settings())
    assert handle.enabled is False
    assert not tracing_enabled()
    assert auto_instrument(fastapi.FastAPI()) == []
    with capture_logs() as logs, traced("nothing") as span:
        log.info("plain")
    assert span.trace_id is None
    assert not span.is_recording
    assert "trace_id" not in logs[0]


def test_missing_extra_raises_only_when_tracing_is_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    assert init_tracing(Settings()).enabled is False
    with pytest.raises(MissingDependencyError, match=r"mainspring\[otel\]"):
        init_tracing(tracing_settings())


def test_init_again_replaces_the_previous_setup() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    init_tracing(tracing_settings(), exporter=first)
    handle = init_tracing(tracing_settings(), exporter=second)
    with traced("after"):
        pass
    assert first.get_finished_spans() == ()
    assert [s.name for s in second.get_finished_spans()] == ["after"]
    handle.shutdown()
    assert not tracing_enabled()
    with traced("ignored"):
        pass
    assert [s.name for s in second.get_finished_spans()] == ["after"]


def test_tracing_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="otlp_endpoint"):
        tracing_settings(exporter="otlp")
    with pytest.raises(ValidationError, match="must be a path"):
        tracing_settings(excluded_urls=["health"])
    with pytest.raises(ValidationError):
        tracing_settings(sample_ratio=1.5)
    init_tracing(tracing_settings(), exporter=InMemorySpanExporter())
    with pytest.raises(ConfigError, match="unknown libraries"):
        auto_instrument(libraries=["mongo"])


@pytest.mark.parametrize(
    ("url", "excluded"),
    [
        ("http://svc/health", True),
        ("http://svc/health/live", True),
        ("https://svc:8443/health/ready/deep", True),
        ("http://svc/metrics", True),
        ("http://svc/metrics/extra", False),
        ("http://svc/healthy", False),
        ("http://svc/orders/health/live", False),
    ],
)
def test_excluded_url_patterns(url: str, excluded: bool) -> None:
    import re

    patterns = excluded_urls_regex(["/health/*", "/metrics"]).split(",")
    assert any(re.search(p, url) for p in patterns) is excluded


def make_app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, Any]:
        log.info("loading order", order_id=order_id)
        context = get_context()
        return {"id": order_id, "trace_id": context.trace_id}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    @app.get("/metrics")
    async def metrics() -> str:
        return ""

    return app


async def test_fastapi_requests_are_traced_except_health_and_metrics(spans: InMemorySpanExporter) -> None:
    app = make_app()
    assert auto_instrument(app, libraries=()) == ["fastapi"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        with capture_logs() as logs:
            response = await client.get("/orders/7")
        spans.clear()
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert spans.get_finished_spans() == ()
        incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = format_traceparent(incoming_trace, "00f067aa0ba902b7")
        continued = await client.get("/orders/8", headers={"traceparent": parent})

    assert response.status_code == 200
    (record,) = [r for r in logs if r["event"] == "loading order"]
    assert record["trace_id"] == response.json()["trace_id"]
    assert continued.json()["trace_id"] == incoming_trace
    server = [s for s in spans.get_finished_spans() if s.name == "GET /orders/{order_id}"]
    assert server
    assert server[0].context.trace_id == int(incoming_trace, 16)


def test_otlp_exporter_posts_spans_to_the_endpoint() -> None:
    received: list[tuple[str, str | None, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            self.rfile.read(length)
            received.append((self.path, self.headers["Content-Type"], length))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        handle: Tracing = init_tracing(tracing_settings(exporter="otlp", otlp_endpoint=endpoint))
        with traced("exported"):
            pass
        assert handle.force_flush(timeout=10)
    finally:
        shutdown_tracing()
        server.shutdown()
        server.server_close()
        thread.join()
    assert received
    path, content_type, length = received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert length > 0
