"""Pure ASGI middleware: security response headers and rate limiting.

Plain ASGI callables (no ``BaseHTTPMiddleware``), so they add no task or body buffering per request,
keep ``contextvars`` intact and work under any ASGI framework: ``app.add_middleware(Cls, ...)`` in
Starlette/FastAPI, or ``Cls(app, ...)`` around anything else. Neither imports a web framework.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final, Literal

import orjson

from mainspring.context import get_context
from mainspring.errors import RateLimitedError, ValidationError
from mainspring.logging import get_logger
from mainspring.security._ratelimit import RateLimiter, RateLimitKey
from mainspring.security._ratelimit_types import Decision, Limit, rate_limit_headers

__all__ = ["DEFAULT_SECURITY_HEADERS", "RateLimitMiddleware", "SecurityHeadersMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Builds the rate-limit key of a request from its ASGI scope; None leaves the request unlimited.
KeyFunc = Callable[[Scope], str | None]

log = get_logger("mainspring.security.asgi")

#: Headers :class:`SecurityHeadersMiddleware` adds by default: a strict baseline for a JSON API.
DEFAULT_SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class SecurityHeadersMiddleware:
    """Add security headers to every HTTP response that does not set them itself.

    ``headers`` is merged over :data:`DEFAULT_SECURITY_HEADERS`; a ``None`` value drops a default
    (``{"Content-Security-Policy": None}`` for an app that serves HTML with its own policy). A header the
    application already set is left as it is.
    """

    def __init__(self, app: ASGIApp, *, headers: Mapping[str, str | None] | None = None) -> None:
        merged: dict[str, str | None] = dict(DEFAULT_SECURITY_HEADERS)
        merged.update(headers or {})
        for name, value in merged.items():
            if (
                not name
                or any(c in name for c in " :\r\n")
                or (value is not None and ("\n" in value or "\r" in value))
            ):
                raise ValidationError(f"security header {name!r} is not a valid header")
        self.app = app
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in merged.items()
            if value is not None
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application, adding the headers to its ``http.response.start`` message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend((n, v) for n, v in self._headers if n not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def rate_limited_error(limit: Limit, decision: Decision) -> RateLimitedError:
    """The 429 error for a denied ``decision`` under ``limit``, worded as :meth:`RateLimiter.check` does."""
    wait = max(1, math.ceil(decision.retry_after))
    reason = (
        "the rate-limit store is unavailable and this limit fails closed"
        if decision.degraded
        else f"rate limit of {limit.rate} per {limit.per:g} s exceeded"
    )
    return RateLimitedError(
        f"{reason}; retry in {wait} s",
        retry_after=decision.retry_after,
        details={"limit": decision.limit, "window": limit.per, "degraded": decision.degraded},
    )


def client_ip(scope: Scope) -> str | None:
    """The client's IP address from an ASGI scope, or None (Unix socket, test client without one)."""
    client = scope.get("client")
    if not client:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


class RateLimitMiddleware:
    """Rate-limit HTTP requests with a :class:`~mainspring.security.RateLimiter`.

    ``key`` picks the budget a request counts against:

    - ``"ip"`` (default): the client address from the ASGI scope (behind a proxy, let the server
      rewrite it from ``X-Forwarded-For`` for trusted proxies only, e.g. uvicorn ``--forwarded-allow-ips``);
    - ``"api_key"``: the public prefix of the key in ``api_key_header``, else the IP;
    - ``"principal"``: the principal already bound in :mod:`mainspring.context` by an outer layer, else
      the IP;
    - ``"route"``: method and path, per client IP;
    - or a callable ``(scope) -> str | None``; ``None`` exempts the request.

    Allowed responses get ``RateLimit-*`` headers; a denied request gets a 429
    ``application/problem+json`` body (:meth:`~mainspring.errors.MainspringError.to_problem`) with
    ``RateLimit-*`` and ``Retry-After``. Paths in ``exempt_paths`` (exact, such as ``/health``) are not
    counted. The limiter must be started (the service lifecycle or ``async with``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        limit: Limit,
        key: Literal["ip", "api_key", "principal", "route"] | KeyFunc = "ip",
        scope: str = "http",
        exempt_paths: Iterable[str] = (),
        api_key_header: str = "X-API-Key",
    ) -> None:
        self.app = app
        self._limiter = limiter
        self._limit = limit
        self._scope = scope
        self._exempt = frozenset(exempt_paths)
        self._api_key_header = api_key_header.lower().encode("latin-1")
        builders: dict[str, KeyFunc] = {
            "ip": self._by_ip,
            "api_key": self._by_api_key,
            "principal": self._by_principal,
            "route": self._by_route,
        }
        if callable(key):
            self._key = key
        elif key in builders:
            self._key = builders[key]
        else:
            raise ValidationError(
                f"rate-limit key {key!r} is not supported: use 'ip', 'api_key', 'principal', 'route' "
                "or a callable"
            )

    def _by_ip(self, scope: Scope) -> str:
        ip = client_ip(scope)
        if ip is None:
            # Unix sockets and test clients have no IP; they share one budget rather than none.
            return f"{self._scope}:ip:unknown"
        return RateLimitKey.ip(ip, scope=self._scope)

    def _by_api_key(self, scope: Scope) -> str:
        presented = _header(scope, self._api_key_header)
        if presented:
            try:
                return RateLimitKey.api_key(presented, scope=self._scope)
            except ValidationError:
                # Not shaped like a key: the authentication layer will refuse it; count it by IP.
                return self._by_ip(scope)
        return self._by_ip(scope)

    def _by_principal(self, scope: Scope) -> str:
        principal = get_context().principal
        if principal is None:
            return self._by_ip(scope)
        return RateLimitKey.principal(principal, scope=self._scope)

    def _by_route(self, scope: Scope) -> str:
        return RateLimitKey.route(
            scope.get("method", "GET"), scope.get("path", "/"), by=client_ip(scope), scope=self._scope
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request; answer 429 when denied, else run the app and add the headers."""
        if scope["type"] != "http" or scope.get("path") in self._exempt:
            await self.app(scope, receive, send)
            return
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        decision = await self._limiter.hit(key, self._limit)
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in rate_limit_headers(decision).items()
        ]
        if not decision.allowed:
            await self._deny(scope, send, decision, headers)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _deny(
        self, scope: Scope, send: Send, decision: Decision, headers: list[tuple[bytes, bytes]]
    ) -> None:
        error = rate_limited_error(self._limit, decision)
        log.info(
            "rate_limited",
            path=scope.get("path"),
            method=scope.get("method"),
            retry_after=decision.retry_after,
        )
        body = orjson.dumps(error.to_problem(instance=scope.get("path")))
        await send(
            {
                "type": "http.response.start",
                "status": error.http_status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
