"""The ``/metrics`` endpoint as a plain ASGI app, and the route template of a request for labels."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mainspring.observability._metrics import UNMATCHED_ROUTE, MetricsRegistry, get_metrics

__all__ = ["metrics_app", "route_template"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_app(metrics: MetricsRegistry | None = None, *, refresh_timeout: float = 2.0) -> ASGIApp:
    """Return an ASGI app that serves the exposition of ``metrics`` (the process default if ``None``).

    Mount it at ``/metrics``. Each scrape first reads the outbox backlogs (``refresh``, at most
    ``refresh_timeout`` seconds per relay), then renders. Only ``GET`` and ``HEAD`` are allowed.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        registry = metrics or get_metrics()
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"method not allowed\n", "text/plain; charset=utf-8", allow=b"GET, HEAD"
            )
            return
        await registry.refresh(refresh_timeout)
        body, content_type = registry.render()
        await _respond(send, 200, b"" if scope.get("method") == "HEAD" else body, content_type)

    return app


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, *, allow: bytes | None = None
) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str:
    """Return the template of the route that served ``scope`` (``/users/{user_id}``), for metric labels.

    Read it after the app ran: Starlette's router stores the matched route in ``scope["route"]``.
    Inside a mounted sub-application it is the inner route's template, without the mount's prefix
    (the prefix in the scope is the raw path, which may hold ids). Without a matched route, it is
    :data:`~mainspring.observability.UNMATCHED_ROUTE`, so scans of random paths add no series.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str) or not template:
        return UNMATCHED_ROUTE
    return template
