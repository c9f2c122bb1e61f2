"""``create_app``: a FastAPI application wired to the service, with the chassis middleware and routes.

One pure ASGI middleware (no ``BaseHTTPMiddleware``: it costs about a quarter millisecond per layer)
does per request what every service needs:

* context: ``X-Correlation-ID`` and ``X-Request-ID`` read (or made), ``traceparent`` continued, all
  bound in :mod:`mainspring.context` for the request and echoed on the response;
* refusal: while the service drains (after SIGTERM) new requests get 503, health routes excepted;
* errors: an exception that escapes the app becomes a 500 problem+json without internals, logged
  once with the correlation id;
* metrics: ``http_requests_total`` and ``http_request_duration_seconds`` by method, route template
  (never the raw path) and status;
* an access log: one structured line per request, sampled (errors always logged);
* response headers: the security headers (``DEFAULT_SECURITY_HEADERS`` of
  :mod:`mainspring.security.fastapi`) on every response that does not set them itself.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mainspring._compat import require
from mainspring.context import (
    CAUSATION_ID_HEADER,
    CORRELATION_ID_HEADER,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    RequestContext,
    extract,
    new_correlation_id,
    new_request_id,
    reset_context,
    set_context,
)
from mainspring.errors import ConfigError, MainspringError, ServiceUnavailableError, ValidationError
from mainspring.logging import get_logger
from mainspring.observability._asgi import route_template
from mainspring.observability._metrics import get_metrics

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mainspring.observability import HealthChecker, MetricsRegistry
    from mainspring.service import Service

__all__ = ["DOCS_CSP", "RequestMiddleware", "create_app"]

log = get_logger("mainspring.web")
access_log = get_logger("mainspring.access")

_HEALTH_PREFIX = "/health/"
_PROBLEM_JSON = b"application/problem+json"
_CORRELATION = CORRELATION_ID_HEADER.lower().encode("latin-1")
_REQUEST = REQUEST_ID_HEADER.lower().encode("latin-1")
# Only these headers are decoded for the context (not every header of every request).
_PROPAGATED = frozenset(
    name.lower().encode("latin-1")
    for name in (
        CORRELATION_ID_HEADER,
        REQUEST_ID_HEADER,
        CAUSATION_ID_HEADER,
        TRACEPARENT_HEADER,
        TRACESTATE_HEADER,
    )
)

Scope = dict[str, Any]


def _problem_body(error: MainspringError) -> bytes:
    import orjson

    return orjson.dumps(error.to_problem())


class RequestMiddleware:
    """The chassis's per-request work in one pure ASGI layer (see the module docstring).

    ``response_headers`` (name, value pairs: the security headers under :func:`create_app`) are added
    to every response that does not set them itself.
    """

    #: Marks a layer that gives each request its own :mod:`mainspring.context` scope.
    scopes_context = True

    def __init__(
        self,
        app: Any,
        *,
        service: Service | None = None,
        metrics: MetricsRegistry | None = None,
        access_log_sample: float = 1.0,
        excluded_paths: Iterable[str] = ("/metrics",),
        response_headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Wrap ``app``; ``access_log_sample`` is the share of successful requests logged (0 to 1)."""
        if not 0.0 <= access_log_sample <= 1.0:
            raise ConfigError(f"access_log_sample must be between 0 and 1, got {access_log_sample!r}")
        self.app = app
        self.service = service
        self.metrics = metrics
        self.sample = access_log_sample
        self.excluded = frozenset(excluded_paths)
        self._headers: list[tuple[bytes, bytes]] = []
        for name, value in response_headers:
            if not name or any(c in name for c in " :\r\n") or "\n" in value or "\r" in value:
                raise ConfigError(f"response header {name!r} is not a valid header")
            self._headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self._header_names = frozenset(name for name, _ in self._headers)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        propagated: dict[str, str] | None = None
        for name, value in scope.get("headers", ()):
            if name.lower() in _PROPAGATED:
                if propagated is None:
                    propagated = {}
                propagated[name.decode("latin-1").lower()] = value.decode("latin-1")
        if propagated is None:  # most requests: nothing to continue, two fresh ids
            correlation, request_id = new_correlation_id(), new_request_id()
            context = RequestContext(correlation_id=correlation, request_id=request_id)
        else:
            values = extract(propagated)
            correlation, request_id = values["correlation_id"], values["request_id"]
            context = RequestContext(
                correlation_id=correlation,
                request_id=request_id,
                causation_id=values.get("causation_id"),
                trace_id=values.get("trace_id"),
                span_id=values.get("span_id"),
                trace_flags=values.get("trace_flags"),
                tracestate=values.get("tracestate"),
            )
        token = set_context(context)
        ids = [(_CORRELATION, correlation.encode("latin-1")), (_REQUEST, request_id.encode("latin-1"))]
        extra = self._headers
        extra_names = self._header_names
        status = 500
        response_started = False

        async def send_with_ids(message: Mapping[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [*message.get("headers", ()), *ids]
                if extra:
                    present = {bytes(name).lower() for name, _ in headers} & extra_names
                    headers += extra if not present else [h for h in extra if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        path: str = scope.get("path", "")
        try:
            service = self.service
            if (
                service is not None
                and service.started
                and not service.ready
                and not path.startswith(_HEALTH_PREFIX)
            ):
                await self._problem(send_with_ids, ServiceUnavailableError("the service is shutting down"))
            else:
                await self.app(scope, receive, send_with_ids)
        except Exception as exc:  # the last line of defence: a 500 without internals, logged once
            log.error(
                "request failed",
                method=scope.get("method"),
                path=path,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            if not response_started:
                await self._problem(send_with_ids, _internal())
            status = 500
        finally:
            seconds = time.perf_counter() - started
            if path not in self.excluded:
                self._record(scope, status, seconds)
            reset_context(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = scope.get("method", "")
        (self.metrics or get_metrics()).record_http(method, route, status, seconds)
        if status >= 400 or self.sample >= 1.0 or random.random() < self.sample:
            access_log.info(
                "request",
                method=method,
                path=scope.get("path"),
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
                client=(scope.get("client") or ("", 0))[0],
            )

    @staticmethod
    async def _problem(send: Any, error: MainspringError) -> None:
        body = _problem_body(error)
        headers = [(b"content-type", _PROBLEM_JSON), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _observe_components(service: Service, registry: MetricsRegistry) -> None:
    """Point the service's databases, caches, brokers and relays at the metrics registry."""
    from mainspring.cache import BaseCache
    from mainspring.db import Database
    from mainspring.events import OutboxRelay
    from mainspring.messaging import Broker

    collector = registry.subsystems
    for name, info in service.components.items():
        component = info.component
        if isinstance(component, Database):
            collector.add_database(component, name, replace=True)
        elif isinstance(component, BaseCache):
            collector.add_cache(component, name, replace=True)
        elif isinstance(component, Broker):
            collector.add_broker(component, name, replace=True)
            if component.observer is None:
                component.observer = registry.record_message
        elif isinstance(component, OutboxRelay):
            collector.add_outbox_relay(component, name, replace=True)


#: The Content-Security-Policy of ``/docs``: Swagger UI loads its script and style from jsDelivr.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; frame-ancestors 'none'"
)


class _AsgiEndpoint:
    """An ASGI app as a Starlette route endpoint (a plain function would be taken for a handler)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _internal() -> MainspringError:
    from mainspring.errors import InternalError

    return InternalError("internal error; quote the correlation id when reporting it")


def create_app(
    settings: Any = None,
    *,
    service: Service | None = None,
    routers: Iterable[Any] = (),
    health: HealthChecker | None = None,
    metrics: MetricsRegistry | None = None,
    title: str | None = None,
    version: str = "0.1.0",
    access_log_sample: float = 1.0,
    security_headers: bool = True,
) -> FastAPI:
    """Return a FastAPI app with the chassis around ``routers``.

    - The lifespan starts ``service`` (every component, in dependency order) and stops it on shutdown;
      ``health.mark_started()`` is called once it runs.
    - Routes: ``/health/live``, ``/health/ready`` (the service's readiness and ``health``'s checks),
      ``/health/startup``, ``/metrics`` (Prometheus), ``/docs``.
    - Errors: :class:`~mainspring.errors.MainspringError` becomes problem+json with its status;
      request validation 422 problem+json; anything else 500 problem+json without internals.
    """
    require("fastapi", extra="web", feature="mainspring.web.create_app")
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mainspring.observability import HealthChecker, get_metrics, metrics_app

    checker = health or HealthChecker()
    if service is not None:
        _observe_components(service, metrics or get_metrics())

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if service is not None:
            await service.start()
        checker.mark_started()
        try:
            yield
        finally:
            if service is not None:
                await service.stop()

    name = title or str(getattr(settings, "service_name", None) or "mainspring service")
    app = FastAPI(title=name, version=version, lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_docs(app, name)

    def problem(error: MainspringError) -> Response:
        headers: dict[str, str] = {}
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            headers["Retry-After"] = str(max(0, round(retry_after)))
        return Response(
            _problem_body(error),
            status_code=error.http_status,
            headers=headers,
            media_type="application/problem+json",
        )

    async def on_mainspring_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MainspringError)
        if exc.http_status >= 500:
            log.error("request failed", code=exc.code, error=str(exc))
        return problem(exc)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return problem(ValidationError("the request is not valid", errors=errors))

    app.add_exception_handler(MainspringError, on_mainspring_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)

    def report(body: dict[str, Any], status: int) -> JSONResponse:
        return JSONResponse(body, status_code=status, media_type="application/health+json")

    @app.get("/health/live", include_in_schema=False)
    async def live() -> Response:
        result = await checker.live()
        return report(result.to_dict(), result.http_status)

    @app.get("/health/ready", include_in_schema=False)
    async def ready() -> Response:
        result = await checker.ready()
        body = result.to_dict()
        status = result.http_status
        if service is not None and not service.ready:
            body = {
                **body,
                "status": "fail",
                "output": "the service is not taking work (starting or draining)",
            }
            status = 503
        return report(body, status)

    @app.get("/health/startup", include_in_schema=False)
    async def startup() -> Response:
        result = await checker.startup()
        return report(result.to_dict(), result.http_status)

    # A Route (not a mount, which would redirect /metrics to /metrics/) around the ASGI exposition app.
    app.router.routes.append(Route("/metrics", _AsgiEndpoint(metrics_app(metrics)), include_in_schema=False))
    _include_first(app, routers)
    app.add_middleware(
        RequestMiddleware,
        service=service,
        metrics=metrics,
        access_log_sample=access_log_sample,
        response_headers=_security_headers() if security_headers else (),
    )
    return app


def _security_headers() -> list[tuple[str, str]]:
    from mainspring.security.fastapi import DEFAULT_SECURITY_HEADERS

    return list(DEFAULT_SECURITY_HEADERS.items())


def _include_first(app: FastAPI, routers: Iterable[Any]) -> None:
    """Include ``routers`` ahead of the chassis routes, refusing one that would shadow them.

    The router tries routes in order, so the application's own routes (nearly every request) go
    first and do not pay for matching ``/health/*``, ``/metrics`` and ``/docs`` on the way.
    """
    from starlette.routing import Match

    chassis = list(app.router.routes)
    routers = list(routers)
    for router in routers:
        app.include_router(router)
    own = [route for route in app.router.routes if route not in chassis]
    # The routes as the application declared them (an included router's own routes), for the check.
    declared = [route for router in routers for route in getattr(router, "routes", ())]
    for route in chassis:
        path = getattr(route, "path", "")
        if not path or "{" in path:
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
            clash = next((r for r in declared if r.matches(dict(scope))[0] == Match.FULL), None)
            if clash is not None:
                name = getattr(clash, "path", None) or type(clash).__name__
                raise ConfigError(
                    f"the application's route {name!r} also answers {method} {path}, which "
                    "create_app serves; give it another path"
                )
    app.router.routes[:] = [*own, *chassis]


def _add_docs(app: FastAPI, name: str) -> None:
    """``/docs`` (Swagger UI) and its OAuth2 redirect page, with a CSP that lets Swagger UI load."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from starlette.responses import HTMLResponse

    redirect = "/docs/oauth2-redirect"

    async def docs() -> HTMLResponse:
        response = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{name} - docs",
            oauth2_redirect_url=redirect,
        )
        response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    async def oauth2_redirect() -> HTMLResponse:
        response = get_swagger_ui_oauth2_redirect_html()
        response.headers["Content-Security-Policy"] = DOCS_CSP
        return response

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(redirect, oauth2_redirect, methods=["GET"], include_in_schema=False)
