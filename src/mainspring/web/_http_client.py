"""``http_client``: an ``httpx.AsyncClient`` with timeouts, safe retries, a breaker per host, metrics and
context propagation.

The resilience lives in :class:`ResilientTransport`, a wrapper around the real transport, so it applies
to every request the client sends: each attempt passes the host's :class:`CircuitBreaker`, is counted
in the metrics, and an idempotent request is retried after a connection error or a 429/502/503/504 with
exponential backoff and full jitter (or the server's ``Retry-After``, up to a cap). The propagation
headers (correlation id, request id, ``traceparent``) come from :func:`mainspring.context.inject` in a
request event hook.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from mainspring.config import HttpClientSettings, Settings
from mainspring.context import inject
from mainspring.logging import get_logger
from mainspring.resilience import CircuitBreaker, CircuitOpenError

log = get_logger("mainspring.web.http_client")

#: Methods retried: the idempotent ones (RFC 9110 §9.2.2). POST and PATCH are never retried.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Response statuses that make an idempotent request worth another attempt.
RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
#: Transport errors after which the request never reached the server, so retrying is safe.
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout)

# Backoff jitter needs no cryptographic quality; one generator, not the module's shared state.
_jitter = random.Random()


class HttpClientMetrics:
    """The client's Prometheus series in one registry: requests by host, method and status, and durations.

    ``http_client_requests_total{host,method,status}`` counts attempts (a retried request counts once per
    attempt); ``status`` is the response code, ``error`` for a transport error, or ``circuit_open`` for
    a call the breaker refused. ``http_client_request_duration_seconds{host,method}`` times attempts.
    Use :meth:`for_registry` to get the one instance a registry holds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_client_requests",
            "Outgoing HTTP requests (attempts), by host, method and status.",
            ["host", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_client_request_duration_seconds",
            "Duration of outgoing HTTP requests (attempts), until the response headers.",
            ["host", "method"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> HttpClientMetrics:
        """Return the metrics registered in ``registry`` (default: the global one), creating them once."""
        target = REGISTRY if registry is None else registry
        metrics = _metrics_by_registry.get(target)
        if metrics is None:
            metrics = _metrics_by_registry[target] = cls(target)
        return metrics

    def observe(self, host: str, method: str, status: str, seconds: float | None) -> None:
        """Count one attempt, and time it when it reached the network."""
        self.requests.labels(host, method, status).inc()
        if seconds is not None:
            self.duration.labels(host, method).observe(seconds)


# One instance per registry: registering the same series twice in a registry is an error.
_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, HttpClientMetrics] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before another attempt."""

    retries: int = 2
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    retry_after_max: float = 30.0

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based): uniform in ``[0, min(max, base * 2**retry)]``."""
        return _jitter.uniform(0.0, min(self.backoff_max, self.backoff_base * 2.0**retry))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Read a ``Retry-After`` value (seconds, or an HTTP date) as seconds from now; ``None`` if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class ResilientTransport(httpx.AsyncBaseTransport):
    """Wrap a transport with a breaker per host, metrics per attempt and retries of idempotent requests.

    - Every attempt asks the host's breaker first; an open breaker raises
      :class:`~mainspring.resilience.CircuitOpenError` (not retried). Connection errors and 5xx
      responses count as failures, everything else as successes.
    - GET, HEAD, OPTIONS, PUT and DELETE are retried up to ``policy.retries`` times after a connection
      error or a 429/502/503/504 response, if their body can be sent again. The wait is the server's
      ``Retry-After`` when it gives one (a longer one than ``policy.retry_after_max`` is not waited
      for: the response is returned), otherwise exponential backoff with full jitter.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        policy: RetryPolicy | None = None,
        breaker_factory: Callable[[str], CircuitBreaker] | None = None,
        metrics: HttpClientMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wrap ``inner``; ``breaker_factory(host)`` makes each host's breaker (``None``: no breakers)."""
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.metrics = metrics
        self._breaker_factory = breaker_factory
        self._breakers: dict[str, CircuitBreaker] = {}
        self._sleep = sleep

    def breaker(self, host: str) -> CircuitBreaker | None:
        """Return the breaker of ``host`` (``"name:port"``), made on first use; ``None`` without breakers."""
        if self._breaker_factory is None:
            return None
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = self._breakers.setdefault(host, self._breaker_factory(host))
        return breaker

    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """The breakers made so far, by host."""
        return dict(self._breakers)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the breaker, retrying it when that is safe and worth it."""
        method = request.method
        host = _host_key(request.url)
        retries = self.policy.retries if method in IDEMPOTENT_METHODS and _replayable(request) else 0
        attempt = 0
        while True:
            breaker = self.breaker(host)
            permit = None
            if breaker is not None:
                try:
                    permit = breaker.acquire()
                except CircuitOpenError:
                    self._observe(host, method, "circuit_open", None)
                    raise
            started = time.perf_counter()
            try:
                response = await self.inner.handle_async_request(request)
            except RETRY_ERRORS as error:
                self._observe(host, method, "error", time.perf_counter() - started)
                if permit is not None:
                    permit.record_failure()
                if attempt >= retries:
                    raise
                delay = self.policy.backoff(attempt)
                log.info(
                    "retrying HTTP request",
                    method=method,
                    host=host,
                    attempt=attempt + 1,
                    error=type(error).__name__,
                    delay=round(delay, 3),
                )
            except httpx.TransportError:
                self._observe(host, method, "error", time.perf_counter() - started)
                if permit is not None:
                    permit.record_failure()
                raise
            except BaseException:
                # Cancelled, or a bug in the inner transport: not the dependency's fault.
                if permit is not None:
                    permit.release()
                raise
            else:
                status = response.status_code
                self._observe(host, method, str(status), time.perf_counter() - started)
                if permit is not None:
                    if status >= 500:
                        permit.record_failure()
                    else:
                        permit.record_success()
                if status not in RETRY_STATUSES or attempt >= retries:
                    return response
                delay_or_none = self._delay(response, attempt)
                if delay_or_none is None:
                    return response
                delay = delay_or_none
                await response.aclose()
                log.info(
                    "retrying HTTP request",
                    method=method,
                    host=host,
                    attempt=attempt + 1,
                    status=status,
                    delay=round(delay, 3),
                )
            attempt += 1
            await self._sleep(delay)

    def _delay(self, response: httpx.Response, attempt: int) -> float | None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            return self.policy.backoff(attempt)
        if retry_after > self.policy.retry_after_max:
            return None
        return retry_after

    def _observe(self, host: str, method: str, status: str, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.observe(host, method, status, seconds)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.inner.aclose()


def _host_key(url: httpx.URL) -> str:
    port = url.port
    if port is None:
        port = 443 if url.scheme == "https" else 80
    return f"{url.host}:{port}"


def _replayable(request: httpx.Request) -> bool:
    # A body given as bytes is kept on the request; a streamed one is consumed by the first attempt.
    try:
        request.content  # noqa: B018 - raises RequestNotRead for a streaming body
    except httpx.RequestNotRead:
        return False
    return True


async def propagate_context(request: httpx.Request) -> None:
    """Request event hook: add the propagation headers of the current context the caller did not set."""
    carrier: dict[str, str] = {}
    inject(carrier)
    headers = request.headers
    for name, value in carrier.items():
        if name not in headers:
            headers[name] = value


def http_client(
    settings: HttpClientSettings | Settings | None = None,
    *,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **client_options: Any,
) -> httpx.AsyncClient:
    """Return an ``httpx.AsyncClient`` with the timeouts, retries, breakers, metrics and propagation set.

    ``settings`` is the ``http_client`` section (or whole :class:`~mainspring.config.Settings`; the
    defaults when omitted). ``transport`` is the transport that sends (default: httpx's, with the
    pool limits of the settings) and is wrapped by :class:`ResilientTransport`. ``registry`` is the
    Prometheus registry for the metrics (default: the global one). Other keyword arguments go to
    ``httpx.AsyncClient`` (``auth``, ``verify``, ``follow_redirects``, ...); proxies are not read from the
    environment unless ``trust_env=True`` is passed. Use it as ``async with http_client(...) as client``.
    """
    if isinstance(settings, Settings):
        config = settings.http_client
    elif settings is None:
        config = HttpClientSettings()
    else:
        config = settings
    if transport is None:
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
            ),
            verify=client_options.pop("verify", True),
        )
    breaker_factory = _breaker_factory(config) if config.breaker_enabled else None
    resilient = ResilientTransport(
        transport,
        policy=RetryPolicy(
            retries=config.retries,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            retry_after_max=config.retry_after_max,
        ),
        breaker_factory=breaker_factory,
        metrics=HttpClientMetrics.for_registry(registry),
        sleep=sleep,
    )
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [propagate_context], "response": []}
    for kind, extra_hooks in client_options.pop("event_hooks", {}).items():
        hooks.setdefault(kind, []).extend(extra_hooks)
    client_options.setdefault("trust_env", False)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.write_timeout,
            pool=config.pool_timeout,
        ),
        transport=resilient,
        event_hooks=hooks,
        **client_options,
    )


def _breaker_factory(config: HttpClientSettings) -> Callable[[str], CircuitBreaker]:
    def make(host: str) -> CircuitBreaker:
        return CircuitBreaker(
            f"http:{host}",
            failure_rate_threshold=config.breaker_failure_rate,
            window_size=config.breaker_window_size,
            minimum_calls=config.breaker_minimum_calls,
            open_duration=config.breaker_open_duration,
        )

    return make
