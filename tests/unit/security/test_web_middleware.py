"""The pure ASGI middleware: security headers and rate limiting, on a FastAPI app over httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from mainspring.context import Principal, bind_context
from mainspring.errors import ValidationError
from mainspring.security import Limit, RateLimiter
from mainspring.security.fastapi import (
    DEFAULT_SECURITY_HEADERS,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
)
from mainspring.testing import capture_logs

BASE = "https://api.test"


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items")
    async def items() -> list[int]:
        return [1, 2]

    @app.get("/framed")
    async def framed() -> JSONResponse:
        return JSONResponse({}, headers={"X-Frame-Options": "SAMEORIGIN"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
async def limiter() -> AsyncIterator[RateLimiter]:
    async with RateLimiter("memory://") as limiter:
        yield limiter


def client_for(app: Any, client: tuple[str, int] = ("203.0.113.9", 5000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=client), base_url=BASE)


# -- security headers ---------------------------------------------------------------------------------


async def test_default_security_headers_are_added() -> None:
    app = make_app()
    app.add_middleware(SecurityHeadersMiddleware)
    async with client_for(app) as client:
        response = await client.get("/items")
    for name, value in DEFAULT_SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "max-age=" in response.headers["strict-transport-security"]


async def test_headers_set_by_the_app_win_and_defaults_can_be_dropped_or_changed() -> None:
    app = make_app()
    app.add_middleware(
        SecurityHeadersMiddleware,
        headers={"Content-Security-Policy": None, "Referrer-Policy": "same-origin", "X-Extra": "1"},
    )
    async with client_for(app) as client:
        framed = await client.get("/framed")
        items = await client.get("/items")
    assert framed.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert "content-security-policy" not in items.headers
    assert items.headers["referrer-policy"] == "same-origin"
    assert items.headers["x-extra"] == "1"


def test_an_invalid_header_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a valid header"):
        SecurityHeadersMiddleware(make_app(), headers={"Bad Name": "x"})


# -- rate limiting ------------------------------------------------------------------------------------


async def test_requests_over_the_limit_get_429_problem_with_headers(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limit=Limit(2, 60))
    async with client_for(app) as client:
        first = await client.get("/items")
        second = await client.get("/items")
        with capture_logs() as logs:
            third = await client.get("/items")
    assert first.status_code == 200
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert first.headers["ratelimit-policy"] == "2;w=60"
    assert "retry-after" not in first.headers
    assert second.headers["ratelimit-remaining"] == "0"
    assert third.status_code == 429
    assert third.headers["content-type"] == "application/problem+json"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["ratelimit-remaining"] == "0"
    problem = third.json()
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert problem["instance"] == "/items"
    assert problem["retry_after"] > 0
    assert "rate limit of 2 per 60 s exceeded" in problem["detail"]
    (logged,) = [r for r in logs if r["event"] == "rate_limited"]
    assert logged["path"] == "/items"


async def test_each_client_ip_has_its_own_budget(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limit=Limit(1, 60))
    async with client_for(app, ("198.51.100.1", 1)) as one, client_for(app, ("198.51.100.2", 1)) as two:
        assert (await one.get("/items")).status_code == 200
        assert (await one.get("/items")).status_code == 429
        assert (await two.get("/items")).status_code == 200


async def test_api_key_budgets_are_separate_from_each_other_and_from_the_ip(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limit=Limit(1, 60), key="api_key")
    key_a = "msk_aaaaaaaaaa_" + "a" * 43
    key_b = "msk_bbbbbbbbbb_" + "b" * 43
    async with client_for(app) as client:
        assert (await client.get("/items", headers={"X-API-Key": key_a})).status_code == 200
        assert (await client.get("/items", headers={"X-API-Key": key_a})).status_code == 429
        assert (await client.get("/items", headers={"X-API-Key": key_b})).status_code == 200
        assert (await client.get("/items")).status_code == 200  # no key: counted by IP


async def test_route_keys_count_each_path_separately(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limit=Limit(1, 60), key="route")
    async with client_for(app) as client:
        assert (await client.get("/items")).status_code == 200
        assert (await client.get("/framed")).status_code == 200
        assert (await client.get("/items")).status_code == 429


async def test_principal_key_uses_a_principal_bound_by_an_outer_layer(limiter: RateLimiter) -> None:
    app = make_app()
    limited = RateLimitMiddleware(app, limiter=limiter, limit=Limit(1, 60), key="principal")

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        who = dict(scope["headers"]).get(b"x-who", b"").decode()
        with bind_context(principal=Principal(who) if who else None):
            await limited(scope, receive, send)

    async with client_for(outer) as client:
        assert (await client.get("/items", headers={"X-Who": "alice"})).status_code == 200
        assert (await client.get("/items", headers={"X-Who": "alice"})).status_code == 429
        assert (await client.get("/items", headers={"X-Who": "bob"})).status_code == 200
        assert (await client.get("/items")).status_code == 200  # anonymous: by IP


async def test_exempt_paths_and_a_key_function_returning_none_are_not_counted(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        limit=Limit(1, 60),
        key=lambda scope: None if scope["method"] == "OPTIONS" else "everyone",
        exempt_paths=["/health"],
    )
    async with client_for(app) as client:
        for _ in range(3):
            assert (await client.get("/health")).status_code == 200
            assert "ratelimit-limit" not in (await client.options("/items")).headers
        assert (await client.get("/items")).status_code == 200
        assert (await client.get("/framed")).status_code == 429  # one shared budget


async def test_both_middlewares_together_a_429_still_has_security_headers(limiter: RateLimiter) -> None:
    app = make_app()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, limit=Limit(1, 60))
    app.add_middleware(SecurityHeadersMiddleware)  # added last: outermost
    async with client_for(app) as client:
        await client.get("/items")
        denied = await client.get("/items")
    assert denied.status_code == 429
    assert denied.headers["x-content-type-options"] == "nosniff"


def test_an_unknown_key_name_is_refused(limiter: RateLimiter) -> None:
    with pytest.raises(ValidationError, match="rate-limit key 'user' is not supported"):
        RateLimitMiddleware(make_app(), limiter=limiter, limit=Limit(1, 60), key="user")  # type: ignore[arg-type]
