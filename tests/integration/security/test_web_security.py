"""mainspring.security.fastapi on a real FastAPI app over httpx: schemes, dependencies, sessions, CSRF."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoints' annotations at runtime.

import datetime
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

from mainspring.context import Principal, get_context
from mainspring.errors import ConfigError
from mainspring.security import (
    RBAC,
    ApiKeyService,
    JwtKey,
    KeyRing,
    Limit,
    MemoryApiKeyStore,
    MemoryRevocationList,
    MemorySessionStore,
    RateLimiter,
    RedisSessionStore,
    RoleSpec,
    SessionManager,
    SessionStore,
    TokenService,
    principal_from_certificate,
)
from mainspring.security.fastapi import (
    ApiKeyScheme,
    BearerScheme,
    MtlsScheme,
    SessionScheme,
    WebSecurity,
    authenticated,
    current_principal,
    optional_principal,
    rate_limit,
    require_permissions,
)
from mainspring.testing import ServiceURL, capture_logs

SECRET = "web-test-secret-" * 3
BASE = "https://shop.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class LoginBody(BaseModel):
    user: str
    roles: list[str] = []


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    tokens: TokenService
    keys: ApiKeyService
    revoked: MemoryRevocationList
    clock: Clock

    def bearer(self, subject: str = "alice", roles: tuple[str, ...] = ("customer",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(subject, claims={'roles': list(roles)})}"}

    async def login(self, user: str = "alice", roles: tuple[str, ...] = ("clerk",)) -> str:
        """Log in through the endpoint; return the CSRF token it hands out."""
        response = await self.client.post("/login", json={"user": user, "roles": list(roles)})
        assert response.status_code == 200, response.text
        token: str = response.json()["csrf_token"]
        return token

    def session_cookie(self) -> str:
        value = self.client.cookies.get("session")
        assert value is not None
        return value


def cert_pem(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://shop.test/{common_name}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def principal_from_scope(scope: Mapping[str, Any]) -> Principal | None:
    """What a service does with a server that fills the ASGI TLS extension."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or ()
    if not chain:
        return None
    return principal_from_certificate(x509.load_pem_x509_certificate(chain[0].encode()))


def with_client_cert(app: Any, pem: str) -> Callable[..., Any]:
    """Stand in for a TLS server that verified ``pem`` and exposes it in the scope."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": {"client_cert_chain": [pem]}}}
        await app(scope, receive, send)

    return wrapped


def build_app(
    store: SessionStore, clock: Clock
) -> tuple[FastAPI, TokenService, ApiKeyService, MemoryRevocationList]:
    tokens = TokenService(
        KeyRing(JwtKey.generate("EdDSA", kid="k1")), issuer="https://auth.test", audience="shop"
    )
    keys = ApiKeyService(MemoryApiKeyStore())
    revoked = MemoryRevocationList()
    sessions = SessionScheme(
        SessionManager(store, secret=SECRET, idle_timeout=600, absolute_timeout=3600, clock=clock)
    )
    mtls = MtlsScheme(principal_from_scope)
    rbac = RBAC(
        {
            "customer": RoleSpec(permissions={"orders:read"}),
            "clerk": RoleSpec(permissions={"orders:write"}, inherits={"customer"}),
        }
    )
    security = WebSecurity(
        [
            BearerScheme(tokens, revocation=revoked),
            ApiKeyScheme(
                keys,
                to_principal=lambda r: Principal(
                    r.owner, kind="service", roles=frozenset(r.scopes), auth_method="api_key"
                ),
            ),
            sessions,
            mtls,
        ],
        rbac=rbac,
    )
    app = FastAPI()
    security.install(app)

    @app.get("/me")
    async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        bound = get_context().principal
        return {"id": principal.id, "method": principal.auth_method, "bound": bound.id if bound else None}

    @app.get("/public")
    async def public(principal: Annotated[Principal | None, Depends(optional_principal)]) -> dict[str, Any]:
        return {"id": principal.id if principal else None}

    @app.get("/orders")
    async def list_orders(
        principal: Annotated[Principal, Depends(require_permissions("orders:read"))],
    ) -> list[str]:
        return [f"order of {principal.id}"]

    @app.post("/orders", dependencies=[Depends(require_permissions("orders:write"))])
    async def create_order() -> dict[str, bool]:
        return {"created": True}

    @app.get("/internal", dependencies=[Depends(authenticated([mtls]))])
    async def internal() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/login")
    async def login(body: LoginBody, request: Request, response: Response) -> dict[str, str]:
        principal = Principal(body.user, roles=frozenset(body.roles), auth_method="password")
        session = await sessions.login(request, response, principal)
        return {"csrf_token": sessions.csrf_token(session)}

    @app.post("/elevate")
    async def elevate(
        request: Request, response: Response, principal: Annotated[Principal, Depends(current_principal)]
    ) -> dict[str, str]:
        admin = Principal(principal.id, roles=principal.roles | {"clerk"}, auth_method=principal.auth_method)
        session = await sessions.rotate(request, response, principal=admin)
        return {"csrf_token": sessions.csrf_token(session)}

    @app.post("/basket")
    async def add_to_basket(request: Request, response: Response, item: str) -> list[str]:
        # Anonymous visitors get a session for their basket; it carries over when they log in.
        session = await sessions.session(request)
        if session is None:
            session = await sessions.manager.create()
            response.headers.append("set-cookie", sessions.manager.set_cookie_header(session))
        basket: list[str] = session.data.setdefault("basket", [])
        basket.append(item)
        await sessions.manager.save(session)
        return basket

    @app.get("/basket")
    async def basket(request: Request, _: Annotated[Principal, Depends(current_principal)]) -> list[str]:
        session = await sessions.session(request)
        assert session is not None
        items: list[str] = session.data.get("basket", [])
        return items

    @app.post("/logout")
    async def logout(request: Request, response: Response) -> dict[str, bool]:
        await sessions.logout(request, response)
        return {"ok": True}

    return app, tokens, keys, revoked


@pytest.fixture
async def web() -> AsyncIterator[Harness]:
    clock = Clock()
    app, tokens, keys, revoked = build_app(MemorySessionStore(), clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as client:
        yield Harness(app, client, tokens, keys, revoked, clock)


# -- 401 / 403 ----------------------------------------------------------------------------------------


async def test_no_credentials_is_401_problem_with_every_challenge(web: Harness) -> None:
    response = await web.client.get("/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", ApiKey header="X-API-Key", Session cookie="session"'
    )
    problem = response.json()
    assert problem["code"] == "unauthenticated"
    assert problem["instance"] == "/me"
    assert "bearer, api_key, session, mtls" in problem["detail"]


async def test_bad_bearer_token_is_401_invalid_token_and_logged(web: Harness) -> None:
    with capture_logs() as logs:
        response = await web.client.get("/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'
    assert response.json()["code"] == "invalid_token"
    failures = [r for r in logs if r["event"] == "authentication_failed"]
    assert failures[0]["scheme"] == "bearer"
    assert "not.a.jwt" not in str(logs)


async def test_token_signed_by_an_unknown_key_is_401(web: Harness) -> None:
    other = TokenService(
        KeyRing(JwtKey.generate("EdDSA", kid="k1")), issuer="https://auth.test", audience="shop"
    )
    response = await web.client.get("/me", headers={"Authorization": f"Bearer {other.issue('mallory')}"})
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]


async def test_revoked_token_is_401(web: Harness) -> None:
    token = web.tokens.issue("alice")
    verified = web.tokens.verify(token)
    assert verified.jti is not None
    assert verified.expires_at is not None
    await web.revoked.revoke(verified.jti, verified.expires_at)
    response = await web.client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


async def test_bad_api_key_is_401(web: Harness) -> None:
    response = await web.client.get("/me", headers={"X-API-Key": "msk_nope"})
    assert response.status_code == 401
    assert "API key rejected" in response.json()["detail"]


async def test_missing_permission_is_403_and_the_denial_is_logged(web: Harness) -> None:
    with capture_logs() as logs:
        response = await web.client.post("/orders", headers=web.bearer(roles=("customer",)))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "www-authenticate" not in response.headers
    problem = response.json()
    assert problem["code"] == "permission_denied"
    assert problem["details"] == {"missing": ["orders:write"]}
    denial = next(r for r in logs if r["event"] == "permission_denied")
    assert denial["principal_id"] == "alice"


# -- 200 with each scheme -----------------------------------------------------------------------------


async def test_jwt_authenticates_and_binds_the_principal_in_the_context(web: Harness) -> None:
    response = await web.client.get("/me", headers=web.bearer())
    assert response.status_code == 200
    assert response.json() == {"id": "alice", "method": "jwt", "bound": "alice"}
    assert get_context().principal is None  # unbound again after the request


async def test_jwt_with_the_permission_is_allowed(web: Harness) -> None:
    assert (await web.client.get("/orders", headers=web.bearer(roles=("customer",)))).json() == [
        "order of alice"
    ]
    assert (await web.client.post("/orders", headers=web.bearer(roles=("clerk",)))).status_code == 200


async def test_api_key_authenticates(web: Harness) -> None:
    issued = await web.keys.issue("billing-service", scopes=["clerk"])
    response = await web.client.post("/orders", headers={"X-API-Key": issued.key})
    assert response.status_code == 200
    me = await web.client.get("/me", headers={"X-API-Key": issued.key})
    assert me.json()["method"] == "api_key"


async def test_session_cookie_authenticates_after_login(web: Harness) -> None:
    response = await web.client.post("/login", json={"user": "alice", "roles": ["clerk"]})
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith("session=")
    assert "HttpOnly" in set_cookie
    assert "Secure" in set_cookie
    assert "SameSite=Lax" in set_cookie
    me = await web.client.get("/me")
    assert me.json() == {"id": "alice", "method": "password", "bound": "alice"}


async def test_mtls_principal_comes_from_the_scope(web: Harness) -> None:
    wrapped = with_client_cert(web.app, cert_pem("orders"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(wrapped), base_url=BASE) as client:
        response = await client.get("/me")
        assert response.json() == {
            "id": "spiffe://shop.test/orders",
            "method": "mtls",
            "bound": "spiffe://shop.test/orders",
        }
        assert (await client.get("/internal")).status_code == 200


async def test_a_route_restricted_to_mtls_refuses_a_jwt(web: Harness) -> None:
    response = await web.client.get("/internal", headers=web.bearer())
    assert response.status_code == 401
    assert "mtls" in response.json()["detail"]


async def test_optional_principal_allows_anonymous_but_not_bad_credentials(web: Harness) -> None:
    assert (await web.client.get("/public")).json() == {"id": None}
    assert (await web.client.get("/public", headers=web.bearer())).json() == {"id": "alice"}
    assert (await web.client.get("/public", headers={"Authorization": "Bearer x"})).status_code == 401


# -- sessions -----------------------------------------------------------------------------------------


async def test_login_rotates_the_session_id_and_the_old_cookie_is_refused(web: Harness) -> None:
    await web.login(roles=("customer",))
    first = web.session_cookie()
    await web.login(roles=("customer",))  # logging in again, with the first cookie
    second = web.session_cookie()
    assert first != second
    web.client.cookies.clear()
    old = await web.client.get("/me", headers={"Cookie": f"session={first}"})
    assert old.status_code == 401
    assert "unknown or was ended" in old.json()["detail"]
    new = await web.client.get("/me", headers={"Cookie": f"session={second}"})
    assert new.status_code == 200


async def test_privilege_change_rotates_the_id(web: Harness) -> None:
    token = await web.login(roles=("customer",))
    before = web.session_cookie()
    response = await web.client.post("/elevate", headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    after = web.session_cookie()
    assert after != before
    assert (
        await web.client.post("/orders", headers={"X-CSRF-Token": response.json()["csrf_token"]})
    ).status_code == 200
    # The old CSRF token belonged to the old session.
    assert (await web.client.post("/orders", headers={"X-CSRF-Token": token})).status_code == 403


async def test_an_anonymous_basket_survives_login_under_a_new_id(web: Harness) -> None:
    assert (await web.client.post("/basket", params={"item": "tea"})).json() == ["tea"]
    anonymous = web.session_cookie()
    assert (await web.client.post("/basket", params={"item": "cake"})).json() == ["tea", "cake"]
    assert web.session_cookie() == anonymous  # no new cookie for a second item
    await web.login()
    assert web.session_cookie() != anonymous
    assert (await web.client.get("/basket")).json() == ["tea", "cake"]


async def test_idle_session_expires_and_the_request_is_401(web: Harness) -> None:
    await web.login()
    web.clock.now += 599
    assert (await web.client.get("/me")).status_code == 200
    web.clock.now += 601
    response = await web.client.get("/me")
    assert response.status_code == 401
    assert "idle for more than 600 s" in response.json()["detail"]


async def test_absolute_timeout_ends_an_active_session(web: Harness) -> None:
    await web.login()
    for _ in range(7):
        web.clock.now += 500
        assert (await web.client.get("/me")).status_code == 200
    web.clock.now += 500
    response = await web.client.get("/me")
    assert response.status_code == 401
    assert "absolute timeout" in response.json()["detail"]


async def test_logout_clears_the_cookie_and_ends_the_session(web: Harness) -> None:
    token = await web.login()
    cookie = web.session_cookie()
    response = await web.client.post("/logout", headers={"X-CSRF-Token": token})
    assert "Max-Age=0" in response.headers["set-cookie"]
    web.client.cookies.clear()
    assert (await web.client.get("/me", headers={"Cookie": f"session={cookie}"})).status_code == 401


async def test_forged_session_cookie_is_401(web: Harness) -> None:
    await web.login()
    forged = web.session_cookie()[:-4] + "AAAA"
    web.client.cookies.clear()
    response = await web.client.get("/me", headers={"Cookie": f"session={forged}"})
    assert response.status_code == 401
    assert "not validly signed" in response.json()["detail"]


# -- CSRF ---------------------------------------------------------------------------------------------


async def test_cookie_post_without_csrf_token_is_403(web: Harness) -> None:
    await web.login()
    response = await web.client.post("/orders")
    assert response.status_code == 403
    assert response.json()["code"] == "csrf_failed"


async def test_cookie_post_with_an_invalid_csrf_token_is_403(web: Harness) -> None:
    token = await web.login()
    response = await web.client.post("/orders", headers={"X-CSRF-Token": token[:-2] + "xx"})
    assert response.status_code == 403
    assert response.json()["code"] == "csrf_failed"


async def test_cookie_post_with_the_csrf_token_is_accepted(web: Harness) -> None:
    token = await web.login()
    response = await web.client.post("/orders", headers={"X-CSRF-Token": token})
    assert response.status_code == 200


async def test_csrf_is_not_required_for_safe_methods_or_bearer_auth(web: Harness) -> None:
    await web.login()
    assert (await web.client.get("/orders")).status_code == 200
    web.client.cookies.clear()
    assert (await web.client.post("/orders", headers=web.bearer(roles=("clerk",)))).status_code == 200


# -- configuration ------------------------------------------------------------------------------------


def test_malformed_permission_fails_when_the_route_is_declared() -> None:
    with pytest.raises(ValueError, match="resource:action"):
        require_permissions("orders")
    with pytest.raises(ValueError, match="at least one permission"):
        require_permissions()


def test_websecurity_needs_a_scheme() -> None:
    with pytest.raises(ConfigError, match="at least one authentication scheme"):
        WebSecurity([])


async def test_redis_backed_sessions_work_end_to_end(redis_url: ServiceURL) -> None:
    clock = Clock()
    async with RedisSessionStore(str(redis_url), key_prefix="t:web:") as store:
        app, *_ = build_app(store, clock)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as client:
            response = await client.post("/login", json={"user": "bob", "roles": ["clerk"]})
            token = response.json()["csrf_token"]
            assert (await client.get("/me")).json()["id"] == "bob"
            assert (await client.post("/orders", headers={"X-CSRF-Token": token})).status_code == 200
            clock.now += 601
            assert (await client.get("/me")).status_code == 401


async def test_rate_limit_dependency_keys_by_the_authenticated_principal() -> None:
    tokens = TokenService(
        KeyRing(JwtKey.generate("EdDSA", kid="k1")), issuer="https://auth.test", audience="shop"
    )
    app = FastAPI()
    WebSecurity([BearerScheme(tokens)]).install(app)
    async with RateLimiter("memory://") as limiter:

        @app.get("/search", dependencies=[Depends(rate_limit(limiter, Limit(1, 60)))])
        async def search() -> list[str]:
            return []

        def as_user(name: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens.issue(name)}"}

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as client:
            first = await client.get("/search", headers=as_user("alice"))
            denied = await client.get("/search", headers=as_user("alice"))
            other = await client.get("/search", headers=as_user("bob"))
            anonymous = await client.get("/search")
            anonymous_again = await client.get("/search")
    assert first.status_code == 200
    assert first.headers["ratelimit-remaining"] == "0"
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["ratelimit-limit"] == "1"
    assert denied.json()["code"] == "rate_limited"
    assert other.status_code == 200
    assert anonymous.status_code == 200  # counted by IP
    assert anonymous_again.status_code == 429


def test_rate_limit_refuses_an_unknown_key_kind() -> None:
    with pytest.raises(ValueError, match="use 'principal', 'ip' or a callable"):
        rate_limit(RateLimiter(), Limit(1, 1), by="user")  # type: ignore[arg-type]
