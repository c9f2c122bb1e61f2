"""http_client against a real HTTP server on 127.0.0.1: retries, Retry-After, breaker, headers, metrics."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from mainspring.config import HttpClientSettings, Settings
from mainspring.context import bind_context
from mainspring.resilience import CircuitOpenError
from mainspring.web import RetryPolicy, http_client, parse_retry_after


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A tiny HTTP/1.1 server: replies from a per-path script (default 200), records every request."""

    port: int = 0
    scripts: dict[str, deque[tuple[int, dict[str, str]]]] = field(default_factory=lambda: defaultdict(deque))
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: int | tuple[int, dict[str, str]]) -> None:
        for reply in replies:
            self.scripts[path].append(reply if isinstance(reply, tuple) else (reply, {}))

    def hits(self, path: str) -> list[str]:
        return [r.method for r in self.received if r.path == path]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append(Received(method, path, headers, body))
        status, extra = self.scripts[path].popleft() if self.scripts[path] else (200, {})
        payload = f"{method} {path} -> {status}".encode()
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in extra.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


async def start_server() -> tuple[Server, asyncio.Server]:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    return server, listener


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv, listener = await start_server()
    async with listener:
        yield srv


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def count(registry: CollectorRegistry, method: str, status: str, host: str) -> float:
    value = registry.get_sample_value(
        "http_client_requests_total", {"host": host, "method": method, "status": status}
    )
    return value or 0.0


def host_of(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


async def test_get_is_retried_on_503_until_it_succeeds(server: Server) -> None:
    server.script("/flaky", 503, 503, 200)
    registry, sleeps = CollectorRegistry(), Sleeps()
    async with http_client(HttpClientSettings(retries=2), registry=registry, sleep=sleeps) as client:
        response = await client.get(f"{server.url}/flaky")
    assert response.status_code == 200
    assert response.text == "GET /flaky -> 200"
    assert server.hits("/flaky") == ["GET", "GET", "GET"]
    assert len(sleeps.delays) == 2
    assert all(0 <= d <= 0.1 * 2**i for i, d in enumerate(sleeps.delays))
    assert count(registry, "GET", "503", host_of(server)) == 2
    assert count(registry, "GET", "200", host_of(server)) == 1
    assert (
        registry.get_sample_value(
            "http_client_request_duration_seconds_count", {"host": host_of(server), "method": "GET"}
        )
        == 3
    )


async def test_retries_stop_after_the_configured_number(server: Server) -> None:
    server.script("/down", 502, 502, 502, 200)
    async with http_client(HttpClientSettings(retries=1), registry=CollectorRegistry(), sleep=Sleeps()) as c:
        response = await c.get(f"{server.url}/down")
    assert response.status_code == 502
    assert server.hits("/down") == ["GET", "GET"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_requests_are_not_retried(server: Server, method: str) -> None:
    server.script("/orders", 503, 200)
    sleeps = Sleeps()
    async with http_client(registry=CollectorRegistry(), sleep=sleeps) as client:
        response = await client.request(method, f"{server.url}/orders", json={"sku": "A-1"})
    assert response.status_code == 503
    assert server.hits("/orders") == [method]
    assert sleeps.delays == []


async def test_put_with_a_body_is_retried_with_the_same_body(server: Server) -> None:
    server.script("/items/1", 504, 200)
    async with http_client(registry=CollectorRegistry(), sleep=Sleeps()) as client:
        response = await client.put(f"{server.url}/items/1", content=b"payload")
    assert response.status_code == 200
    assert [r.body for r in server.received] == [b"payload", b"payload"]


async def test_a_streamed_body_is_not_retried(server: Server) -> None:
    server.script("/upload", 503, 200)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"part"

    async with http_client(registry=CollectorRegistry(), sleep=Sleeps()) as client:
        response = await client.put(f"{server.url}/upload", content=chunks())
    assert response.status_code == 503
    assert server.hits("/upload") == ["PUT"]


async def test_retry_after_is_honoured(server: Server) -> None:
    server.script("/limited", (429, {"Retry-After": "2"}), 200)
    sleeps = Sleeps()
    async with http_client(registry=CollectorRegistry(), sleep=sleeps) as client:
        response = await client.get(f"{server.url}/limited")
    assert response.status_code == 200
    assert sleeps.delays == [2.0]


async def test_a_retry_after_beyond_the_cap_returns_the_response(server: Server) -> None:
    server.script("/busy", (503, {"Retry-After": "120"}), 200)
    sleeps = Sleeps()
    settings = HttpClientSettings(retry_after_max=10)
    async with http_client(settings, registry=CollectorRegistry(), sleep=sleeps) as client:
        response = await client.get(f"{server.url}/busy")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "120"
    assert sleeps.delays == []
    assert server.hits("/busy") == ["GET"]


async def test_breaker_opens_per_host_after_failures(server: Server) -> None:
    other, listener = await start_server()
    server.script("/boom", *[500] * 10)
    settings = HttpClientSettings(retries=0, breaker_minimum_calls=4, breaker_window_size=4)
    registry = CollectorRegistry()
    async with listener, http_client(settings, registry=registry, sleep=Sleeps()) as client:
        statuses = [(await client.get(f"{server.url}/boom")).status_code for _ in range(4)]
        with pytest.raises(CircuitOpenError) as refused:
            await client.get(f"{server.url}/boom")
        healthy = await client.get(f"{other.url}/ok")
    assert statuses == [500] * 4
    assert server.hits("/boom") == ["GET"] * 4
    assert refused.value.retry_after > 0
    assert f"http:{host_of(server)}" in str(refused.value)
    assert healthy.status_code == 200
    assert count(registry, "GET", "circuit_open", host_of(server)) == 1


async def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry, sleeps = CollectorRegistry(), Sleeps()
    async with http_client(HttpClientSettings(retries=2), registry=registry, sleep=sleeps) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
    assert len(sleeps.delays) == 2
    assert count(registry, "GET", "error", f"127.0.0.1:{port}") == 3


async def test_a_connect_failure_then_success_is_recovered() -> None:
    attempts: list[str] = []

    def inner(request: httpx.Request) -> httpx.Response:
        attempts.append(request.method)
        if len(attempts) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, text="ok")

    transport = httpx.MockTransport(inner)
    async with http_client(transport=transport, registry=CollectorRegistry(), sleep=Sleeps()) as client:
        response = await client.delete("http://inventory.local/items/3")
    assert response.status_code == 200
    assert attempts == ["DELETE", "DELETE"]


async def test_a_read_timeout_is_not_retried_and_counts_as_a_breaker_failure() -> None:
    attempts: list[str] = []

    def inner(request: httpx.Request) -> httpx.Response:
        attempts.append(request.method)
        raise httpx.ReadTimeout("timed out", request=request)

    client = http_client(transport=httpx.MockTransport(inner), registry=CollectorRegistry(), sleep=Sleeps())
    async with client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("http://slow.local/")
    assert attempts == ["GET"]
    breaker = client._transport.breakers["slow.local:80"]  # type: ignore[attr-defined]
    assert breaker.stats().failed_calls == 1


async def test_propagation_headers_are_sent(server: Server) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with http_client(registry=CollectorRegistry()) as client:
        with bind_context(correlation_id="corr-1", request_id="req-1", trace_id=trace_id, span_id=span_id):
            await client.get(f"{server.url}/a")
            await client.get(f"{server.url}/b", headers={"X-Correlation-ID": "explicit"})
    first, second = server.received
    assert first.headers["x-correlation-id"] == "corr-1"
    assert first.headers["x-request-id"] == "req-1"
    assert first.headers["traceparent"] == f"00-{trace_id}-{span_id}-01"
    assert second.headers["x-correlation-id"] == "explicit"


async def test_settings_set_timeouts_and_whole_settings_are_accepted() -> None:
    settings = Settings(http_client={"connect_timeout": 1.5, "read_timeout": 7})
    async with http_client(settings, registry=CollectorRegistry()) as client:
        assert client.timeout.connect == 1.5
        assert client.timeout.read == 7
        assert client.timeout.pool == 5.0


def test_http_client_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="breaker_minimum_calls"):
        HttpClientSettings(breaker_minimum_calls=50, breaker_window_size=10)
    with pytest.raises(ValidationError):
        HttpClientSettings(retries=-1)


def test_retry_after_parsing_and_backoff_bounds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    policy = RetryPolicy(backoff_base=0.5, backoff_max=1.0)
    assert all(0 <= policy.backoff(n) <= min(1.0, 0.5 * 2**n) for n in range(6) for _ in range(20))
