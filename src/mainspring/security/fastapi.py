"""FastAPI integration: authentication schemes, dependencies and the security middleware.

Configure once with :class:`WebSecurity` and ``install(app)``, then guard routes with
``Depends(authenticated())``, ``Depends(require_permissions("orders:write"))`` or take the caller with
``Depends(current_principal)``. Schemes: bearer JWT (:class:`BearerScheme`), API key header
(:class:`ApiKeyScheme`), session cookie with CSRF protection (:class:`SessionScheme`) and mutual TLS
(:class:`MtlsScheme`). Missing or rejected credentials answer 401 with ``WWW-Authenticate``; a missing
permission or a failed CSRF check answers 403; both as ``application/problem+json``.

Needs the ``web`` extra (``mainspring[web]``); the rest of :mod:`mainspring.security` does not.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the dependencies' annotations at
# runtime, and the closures below refer to local names that string annotations could not resolve.

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from mainspring._compat import require

require("fastapi", extra="web", feature="mainspring.security.fastapi")

from fastapi import FastAPI, Request, Response  # noqa: E402  (after the dependency guard)
from fastapi.responses import JSONResponse  # noqa: E402

from mainspring.context import Principal, get_context, reset_context, set_context  # noqa: E402
from mainspring.errors import (  # noqa: E402
    AuthenticationError,
    ConfigError,
    MainspringError,
    PermissionDeniedError,
    RateLimitedError,
)
from mainspring.logging import get_logger  # noqa: E402
from mainspring.security._apikeys import ApiKeyRecord, ApiKeyService  # noqa: E402
from mainspring.security._asgi import (  # noqa: E402
    DEFAULT_SECURITY_HEADERS,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
    client_ip,
    rate_limited_error,
)
from mainspring.security._csrf import CsrfProtect  # noqa: E402
from mainspring.security._ratelimit import RateLimiter, RateLimitKey  # noqa: E402
from mainspring.security._ratelimit_types import Decision, Limit, rate_limit_headers  # noqa: E402
from mainspring.security._rbac import RBAC, _check_permission  # noqa: E402
from mainspring.security._revocation import RevocationList  # noqa: E402
from mainspring.security._sessions import Session, SessionManager  # noqa: E402
from mainspring.security._tokens import TokenService, VerifiedToken  # noqa: E402

__all__ = [
    "DEFAULT_SECURITY_HEADERS",
    "ApiKeyScheme",
    "AuthScheme",
    "BearerScheme",
    "MtlsScheme",
    "RateLimitMiddleware",
    "SecurityHeadersMiddleware",
    "SessionScheme",
    "WebSecurity",
    "authenticated",
    "current_principal",
    "optional_principal",
    "principal_from_claims",
    "rate_limit",
    "require_permissions",
]

log = get_logger("mainspring.security.web")

_STATE_SECURITY = "mainspring_security"
_STATE_PRINCIPAL = "mainspring_principal"
_UNSET: Any = object()
_PRINCIPAL_CACHE_SIZE = 1024
_STATE_CHALLENGE = "mainspring_challenge"
_STATE_SESSION = "mainspring_session"
_STATE_RATE_HEADERS = "mainspring_rate_limit_headers"


@runtime_checkable
class AuthScheme(Protocol):
    """One way to authenticate a request.

    ``authenticate`` returns ``None`` when the request carries no credentials of this kind, the
    :class:`~mainspring.context.Principal` when they are valid, and raises
    :class:`~mainspring.errors.AuthenticationError` when they are present but rejected. ``challenge`` is
    this scheme's ``WWW-Authenticate`` challenge, or ``None``.
    """

    name: str

    @property
    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` challenge of this scheme, if it has one."""
        ...

    async def authenticate(self, request: Request) -> Principal | None:
        """Return the principal, None without credentials; raise AuthenticationError when rejected."""
        ...


def _claim_strings(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def principal_from_claims(token: VerifiedToken) -> Principal:
    """Build a principal from JWT claims: ``sub``, ``tenant``, ``roles``, ``scope``/``scp``, ``kind``."""
    claims = token.claims
    kind = claims.get("kind")
    tenant = claims.get("tenant")
    return Principal(
        id=token.subject,
        kind=kind if isinstance(kind, str) else "user",
        tenant=tenant if isinstance(tenant, str) else None,
        roles=_claim_strings(claims.get("roles")),
        scopes=_claim_strings(claims.get("scope")) | _claim_strings(claims.get("scp")),
        auth_method="jwt",
    )


class BearerScheme:
    """``Authorization: Bearer <JWT>`` verified by a :class:`~mainspring.security.TokenService`.

    ``revocation`` (optional) refuses tokens whose ``jti`` was revoked; ``to_principal`` maps the
    verified token to a principal (default :func:`principal_from_claims`).
    """

    name = "bearer"

    def __init__(
        self,
        tokens: TokenService,
        *,
        revocation: RevocationList | None = None,
        to_principal: Callable[[VerifiedToken], Principal] = principal_from_claims,
        realm: str = "api",
    ) -> None:
        self._tokens = tokens
        self._revocation = revocation
        self._to_principal = to_principal
        self._realm = realm.replace('"', "")
        # token -> (the VerifiedToken it mapped from, the principal): the TokenService hands back the
        # same VerifiedToken while it caches a token, so its principal is built once too.
        self._principals: dict[str, tuple[VerifiedToken, Principal]] = {}

    @property
    def challenge(self) -> str:
        """``Bearer realm="..."`` (RFC 6750)."""
        return f'Bearer realm="{self._realm}"'

    async def authenticate(self, request: Request) -> Principal | None:
        """Verify the bearer token, if the request has one."""
        header = _authorization(request.scope)
        if not header:
            return None
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer":
            return None
        try:
            token = token.strip()
            if not token:
                raise AuthenticationError("bearer token rejected: the Authorization header has no token")
            verified = self._tokens.verify(token)
            jti = verified.jti
            if self._revocation is not None and jti is not None and await self._revocation.is_revoked(jti):
                raise AuthenticationError(
                    "JWT rejected: the token was revoked; obtain a new one", code="invalid_token"
                )
        except AuthenticationError:
            # RFC 6750 section 3.1: a rejected token gets error="invalid_token" in the challenge.
            setattr(request.state, _STATE_CHALLENGE, f'{self.challenge}, error="invalid_token"')
            raise
        known = self._principals.get(token)
        if known is not None and known[0] is verified:
            return known[1]
        principal = self._to_principal(verified)
        if len(self._principals) >= _PRINCIPAL_CACHE_SIZE:
            self._principals.clear()
        self._principals[token] = (verified, principal)
        return principal


def _authorization(scope: Mapping[str, Any]) -> str | None:
    # Straight from the ASGI scope: cheaper than building Starlette's Headers for one lookup.
    for name, value in scope.get("headers", ()):
        if name == b"authorization" or name.lower() == b"authorization":
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _principal_from_api_key(record: ApiKeyRecord) -> Principal:
    return Principal(id=record.owner, kind="service", scopes=frozenset(record.scopes), auth_method="api_key")


class ApiKeyScheme:
    """An API key in a header (default ``X-API-Key``), checked by :class:`~mainspring.security.ApiKeyService`.

    By default the principal is the key's owner as a ``service`` with the key's scopes and no roles;
    pass ``to_principal`` to give it roles (for :func:`require_permissions`).
    """

    name = "api_key"

    def __init__(
        self,
        service: ApiKeyService,
        *,
        header: str = "X-API-Key",
        to_principal: Callable[[ApiKeyRecord], Principal] = _principal_from_api_key,
    ) -> None:
        self._service = service
        self.header = header
        self._to_principal = to_principal

    @property
    def challenge(self) -> str:
        """``ApiKey header="X-API-Key"``: not a registered scheme, but it tells a client what to send."""
        return f'ApiKey header="{self.header}"'

    async def authenticate(self, request: Request) -> Principal | None:
        """Verify the API key header, if present."""
        key = request.headers.get(self.header)
        if key is None:
            return None
        return self._to_principal(await self._service.verify(key.strip()))


class SessionScheme:
    """A signed session-id cookie resolved by a :class:`~mainspring.security.SessionManager`.

    Unsafe methods (POST, PUT, PATCH, DELETE, ...) authenticated this way must carry the session's CSRF
    token (:meth:`csrf_token`) in ``csrf.header_name``; otherwise 403. A cookie of an anonymous session
    counts as no credentials. Use :meth:`login`, :meth:`rotate` and :meth:`logout` in your endpoints:
    they rotate the id and set or clear the cookie on the response.
    """

    name = "session"

    def __init__(self, manager: SessionManager, *, csrf: CsrfProtect | None = None) -> None:
        self.manager = manager
        self.csrf = csrf or CsrfProtect()

    @property
    def challenge(self) -> str:
        """``Session cookie="session"``: informational (browsers show no prompt for it)."""
        return f'Session cookie="{self.manager.cookie.name}"'

    def _cookie(self, request: Request) -> str | None:
        return request.cookies.get(self.manager.cookie.name)

    async def session(self, request: Request) -> Session | None:
        """Return the request's live session (loaded once per request), or None."""
        if hasattr(request.state, _STATE_SESSION):
            cached: Session | None = getattr(request.state, _STATE_SESSION)
            return cached
        session = await self.manager.load(self._cookie(request))
        setattr(request.state, _STATE_SESSION, session)
        return session

    async def authenticate(self, request: Request) -> Principal | None:
        """Resolve the cookie; for an unsafe method, check the CSRF token too."""
        cookie = self._cookie(request)
        if not cookie:
            return None
        session = await self.manager.require(cookie)
        setattr(request.state, _STATE_SESSION, session)
        if session.principal is None:
            return None
        self.csrf.verify(session, request.method, request.headers.get(self.csrf.header_name))
        return session.principal

    def csrf_token(self, session: Session) -> str:
        """Return a fresh (masked) CSRF token for ``session`` to hand to the client."""
        return self.csrf.token(session)

    def _set(self, request: Request, response: Response, session: Session) -> Session:
        response.headers.append("set-cookie", self.manager.set_cookie_header(session))
        setattr(request.state, _STATE_SESSION, session)
        return session

    async def login(self, request: Request, response: Response, principal: Principal) -> Session:
        """Log ``principal`` in: a new session id (the old cookie stops working) set on ``response``."""
        current = await self.manager.load(self._cookie(request))
        return self._set(request, response, await self.manager.login(current, principal))

    async def rotate(
        self, request: Request, response: Response, *, principal: Principal | None = None
    ) -> Session:
        """Give the current session a new id after a privilege change (``principal`` replaces the old)."""
        current = await self.manager.require(self._cookie(request))
        return self._set(request, response, await self.manager.rotate(current, principal=principal))

    async def logout(self, request: Request, response: Response) -> None:
        """End the current session (if any) and clear the cookie."""
        current = await self.manager.load(self._cookie(request))
        if current is not None:
            await self.manager.destroy(current)
        response.headers.append("set-cookie", self.manager.clear_cookie_header())
        setattr(request.state, _STATE_SESSION, None)


class MtlsScheme:
    """Mutual TLS: ``extract(scope)`` reads the verified client certificate's principal from the ASGI scope.

    The TLS handshake (and certificate verification) is the server's job; ``extract`` returns None when
    there is no client certificate. Uvicorn does not put the peer certificate in the scope; use a server
    that fills the ASGI TLS extension (``scope["extensions"]["tls"]``) or a custom uvicorn protocol, or
    terminate TLS at a proxy and read the principal from a header that only the proxy can set.
    """

    name = "mtls"
    challenge = None

    def __init__(self, extract: Callable[[Mapping[str, Any]], Principal | None]) -> None:
        self._extract = extract

    async def authenticate(self, request: Request) -> Principal | None:
        """Return the principal ``extract`` finds in the scope."""
        return self._extract(request.scope)


class WebSecurity:
    """The schemes (tried in order) and the :class:`~mainspring.security.RBAC` of one application.

    The first scheme that finds credentials decides: valid credentials authenticate, rejected ones are a
    401 (the next scheme is not tried). :meth:`install` attaches it to the app and registers the
    problem+json handlers for 401 and 403.
    """

    def __init__(self, schemes: Sequence[AuthScheme], *, rbac: RBAC | None = None) -> None:
        if not schemes:
            raise ConfigError("WebSecurity needs at least one authentication scheme")
        self.schemes: tuple[AuthScheme, ...] = tuple(schemes)
        self.rbac = rbac

    def install(self, app: FastAPI) -> None:
        """Attach to ``app`` and render authentication and permission errors as problem+json.

        Unless the app already has one (``mainspring.web.create_app``'s ``RequestMiddleware``), also
        adds a small ASGI layer that gives every request its own :mod:`mainspring.context` scope, so
        the principal bound by the dependencies ends with the request.
        """
        setattr(app.state, _STATE_SECURITY, self)
        if not any(getattr(m.cls, "scopes_context", False) for m in app.user_middleware):
            app.add_middleware(_ContextScope)
        app.add_exception_handler(AuthenticationError, self._problem)
        app.add_exception_handler(PermissionDeniedError, self._problem)
        app.add_exception_handler(RateLimitedError, self._problem)

    async def _problem(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, MainspringError):  # registered for MainspringError subclasses only
            raise exc
        error = exc
        headers: dict[str, str] = {}
        if isinstance(error, AuthenticationError):
            challenge = getattr(request.state, _STATE_CHALLENGE, None) or ", ".join(
                s.challenge for s in self.schemes if s.challenge
            )
            if challenge:
                headers["WWW-Authenticate"] = challenge
        if isinstance(error, RateLimitedError):
            headers.update(getattr(request.state, _STATE_RATE_HEADERS, None) or {})
            headers.setdefault("Retry-After", str(max(1, math.ceil(error.retry_after))))
        return JSONResponse(
            error.to_problem(instance=request.url.path),
            status_code=error.http_status,
            headers=headers,
            media_type="application/problem+json",
        )

    async def authenticate(
        self, request: Request, schemes: Iterable[AuthScheme] | None = None
    ) -> Principal | None:
        """Return the principal of the first scheme with credentials, or None if none has any."""
        for scheme in self.schemes if schemes is None else schemes:
            try:
                principal = await scheme.authenticate(request)
            except AuthenticationError as exc:
                log.info(
                    "authentication_failed",
                    scheme=scheme.name,
                    code=exc.code,
                    reason=exc.details.get("reason"),
                    path=request.url.path,
                )
                raise
            if principal is not None:
                return principal
        return None

    def missing_credentials(self, schemes: Iterable[AuthScheme] | None = None) -> AuthenticationError:
        """The 401 for a request without credentials, naming what would have been accepted."""
        names = ", ".join(s.name for s in (self.schemes if schemes is None else schemes))
        return AuthenticationError(f"authentication required: send credentials for one of: {names}")


class _ContextScope:
    """Restore the context a request started with when it ends (the dependencies bind the principal)."""

    scopes_context = True

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = set_context(get_context())
        try:
            await self.app(scope, receive, send)
        finally:
            reset_context(token)


def _security(request: Request) -> WebSecurity:
    security = getattr(request.app.state, _STATE_SECURITY, None)
    if not isinstance(security, WebSecurity):
        raise ConfigError("mainspring security is not installed: call WebSecurity(...).install(app)")
    return security


def _bind_principal(principal: Principal) -> None:
    # Set without a reset: the request's context scope (RequestMiddleware under create_app, the layer
    # WebSecurity.install adds otherwise) restores the previous context when the request ends. A
    # generator dependency could reset it itself, but FastAPI's generator path costs more than the
    # authentication it wraps.
    set_context(get_context().with_principal(principal))


async def optional_principal(request: Request) -> Principal | None:
    """Dependency: the authenticated principal, or None without credentials (rejected ones are a 401).

    Authentication runs once per request (the result is kept on ``request.state``), and the principal
    is bound in :mod:`mainspring.context` for the rest of the request (logging, audit).
    """
    # request.state is the scope's "state" dict; read it directly (a missing attribute on State
    # costs an exception).
    state: dict[str, Any] = request.scope.setdefault("state", {})
    cached: Principal | None = state.get(_STATE_PRINCIPAL, _UNSET)
    if cached is not _UNSET:
        return cached
    principal = await _security(request).authenticate(request)
    state[_STATE_PRINCIPAL] = principal
    if principal is not None:
        _bind_principal(principal)
    return principal


async def current_principal(request: Request) -> Principal:
    """Dependency: the authenticated principal; 401 with ``WWW-Authenticate`` when there is none."""
    principal = await optional_principal(request)
    if principal is None:
        raise _security(request).missing_credentials()
    return principal


def authenticated(schemes: Sequence[AuthScheme] | None = None) -> Callable[..., Awaitable[Principal]]:
    """Return a dependency that requires authentication and returns the :class:`Principal`.

    Without ``schemes`` it is :func:`current_principal` (the app's schemes); with them, only those
    schemes are tried for the route (``authenticated([mtls])`` for an internal endpoint).
    """
    if schemes is None:
        return current_principal
    chosen = tuple(schemes)

    async def dependency(request: Request) -> Principal:
        security = _security(request)
        principal = await security.authenticate(request, chosen)
        if principal is None:
            raise security.missing_credentials(chosen)
        _bind_principal(principal)
        return principal

    return dependency


def require_permissions(
    *permissions: str, rbac: RBAC | None = None, schemes: Sequence[AuthScheme] | None = None
) -> Callable[..., Any]:
    """Return a dependency requiring an authenticated principal holding every one of ``permissions``.

    Permissions are ``resource:action`` and checked by ``rbac`` (default: the :class:`WebSecurity`
    one) against the principal's roles. A denial raises ``PermissionDeniedError`` (403) and is logged.
    A malformed permission raises ``ValueError`` here, when the route is declared.
    """
    if not permissions:
        raise ValueError("require_permissions() needs at least one permission")
    for permission in permissions:
        _check_permission(permission)
    # Called, not declared with Depends: one dependency per route is much cheaper for FastAPI to solve.
    principal_dependency = authenticated(schemes)

    async def dependency(request: Request) -> Principal:
        principal = await principal_dependency(request)
        checker = rbac or _security(request).rbac
        if checker is None:
            raise ConfigError("require_permissions needs an RBAC: pass rbac= here or to WebSecurity")
        checker.require(principal, *permissions)
        return principal

    return dependency


def rate_limit(
    limiter: RateLimiter,
    limit: Limit,
    *,
    by: Literal["principal", "ip"] | Callable[[Request, Principal | None], str] = "principal",
    scope: str = "api",
) -> Callable[..., Any]:
    """Return a dependency that counts the request under ``limit`` after authentication.

    ``by="principal"`` keys by the authenticated principal (anonymous callers by IP), which the ASGI
    middleware cannot do because it runs before the route's dependencies; ``"ip"`` keys by client IP;
    a callable ``(request, principal) -> key`` builds its own. Allowed responses get ``RateLimit-*``
    headers; a denial is a 429 problem with ``Retry-After`` (needs :meth:`WebSecurity.install`).
    """
    if not callable(by) and by not in ("principal", "ip"):
        raise ValueError(f"rate_limit by={by!r}: use 'principal', 'ip' or a callable")

    async def dependency(request: Request, response: Response) -> Decision:
        principal = await optional_principal(request)
        if callable(by):
            key = by(request, principal)
        elif by == "principal" and principal is not None:
            key = RateLimitKey.principal(principal, scope=scope)
        else:
            ip = client_ip(request.scope)
            key = RateLimitKey.ip(ip, scope=scope) if ip is not None else f"{scope}:ip:unknown"
        decision = await limiter.hit(key, limit)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            setattr(request.state, _STATE_RATE_HEADERS, headers)
            raise rate_limited_error(limit, decision)
        response.headers.update(headers)
        return decision

    return dependency
