"""``create_app``: the chassis around a route: ids, problems, health, metrics, draining, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from mainspring.context import Principal, get_context
from mainspring.errors import ConfigError, NotFoundError, RateLimitedError
from mainspring.observability import MetricsRegistry
from mainspring.security import JwtKey, KeyRing, TokenService
from mainspring.security.fastapi import BearerScheme, WebSecurity, current_principal
from mainspring.service import Service
from mainspring.web import RequestMiddleware, create_app

router = APIRouter()


class Item(BaseModel):
    name: str
    price: float


@router.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, Any]:
    if item_id == 404:
        raise NotFoundError(f"item {item_id} not found")
    if item_id == 429:
        raise RateLimitedError("slow down", retry_after=3)
    if item_id == 500:
        raise RuntimeError("database password is hunter2")
    return {"id": item_id, "correlation_id": get_context().correlation_id}


@router.post("/items")
async def create_item(item: Item) -> Item:
    return item


class Journal:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


@pytest.fixture
def metrics() -> MetricsRegistry:
    return MetricsRegistry()


@pytest.fixture
async def client(metrics: MetricsRegistry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(routers=[router], metrics=metrics, title="items")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as made:
        yield made


async def test_ids_are_bound_and_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/1", headers={"X-Correlation-ID": "corr-1"})
    assert response.status_code == 200
    assert response.json() == {"id": 1, "correlation_id": "corr-1"}
    assert response.headers["x-correlation-id"] == "corr-1"
    assert len(response.headers["x-request-id"]) == 32
    fresh = await client.get("/items/2")
    assert fresh.headers["x-correlation-id"] == fresh.json()["correlation_id"]
    assert "x-content-type-options" in {k.lower() for k in fresh.headers}  # security headers on


async def test_errors_are_problem_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/items/404")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "item 404 not found"
    limited = await client.get("/items/429")
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    invalid = await client.post("/items", json={"name": "x", "price": "cheap"})
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    assert invalid.json()["errors"][0]["loc"] == ["body", "price"]
    crashed = await client.get("/items/500", headers={"X-Correlation-ID": "corr-500"})
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == "application/problem+json"
    assert "hunter2" not in crashed.text
    assert crashed.headers["x-correlation-id"] == "corr-500"


async def test_health_and_metrics_routes(client: httpx.AsyncClient, metrics: MetricsRegistry) -> None:
    for path in ("/health/live", "/health/ready"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.json()["status"] == "pass"
    await client.get("/items/7")
    await client.get("/items/8")
    scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    text = scraped.text
    assert 'http_requests_total{method="GET",route="/items/{item_id}",status="200"} 2.0' in text
    assert "/items/7" not in text  # never the raw path


async def test_lifespan_runs_the_service_and_draining_refuses_new_requests() -> None:
    journal = Journal()
    service = Service(name="items")
    service.add("journal", journal)
    app = create_app(service=service, routers=[router], metrics=MetricsRegistry())
    async with app.router.lifespan_context(app):
        assert journal.events == ["start"]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/items/1")).status_code == 200
            assert (await client.get("/health/startup")).status_code == 200
            service.set_ready(False)  # what SIGTERM does first
            refused = await client.get("/items/1")
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert (await client.get("/health/ready")).status_code == 503
            assert (await client.get("/health/live")).status_code == 200
    assert journal.events == ["start", "stop"]


async def test_the_services_components_report_metrics(tmp_path: Any) -> None:
    import asyncio
    import uuid

    from mainspring.db import Database
    from mainspring.messaging import Message, create_broker

    metrics = MetricsRegistry()
    service = Service()
    service.add("db", Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"))
    broker = service.add("broker", create_broker(f"memory://{uuid.uuid4().hex}", fetch_timeout=0.05))
    done = asyncio.Event()

    @broker.subscriber("orders", group="billing")
    async def bill(message: Message) -> None:
        done.set()

    app = create_app(service=service, routers=[router], metrics=metrics)
    async with app.router.lifespan_context(app):
        await broker.publish("orders", {"n": 1})
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            text = (await client.get("/metrics")).text
    assert 'messaging_messages_total{group="billing",outcome="handled",topic="orders"} 1.0' in text
    assert 'database="db"' in text


async def test_docs_get_a_csp_that_lets_swagger_load(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    api = await client.get("/items/1")
    assert "cdn.jsdelivr.net" not in api.headers["content-security-policy"]


async def test_a_header_the_route_sets_is_kept_and_bad_extra_headers_are_refused() -> None:
    own = APIRouter()

    @own.get("/framed")
    async def framed(response: Response) -> dict[str, bool]:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return {"ok": True}

    app = create_app(routers=[own], metrics=MetricsRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/framed")
    assert response.status_code == 200
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(ConfigError, match="not a valid header"):
        RequestMiddleware(app, response_headers=[("X-Bad", "a\r\nSet-Cookie: x=1")])


async def test_the_principal_is_bound_for_the_request_and_gone_after_it() -> None:
    tokens = TokenService(KeyRing(JwtKey.generate("HS256", kid="k")), issuer="i", audience="a")
    secured = APIRouter()

    @secured.get("/me")
    async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        bound = get_context().principal
        return {"id": principal.id, "bound": bound.id if bound else None}

    app = create_app(routers=[secured], metrics=MetricsRegistry())
    WebSecurity([BearerScheme(tokens)]).install(app)
    # create_app's RequestMiddleware already scopes the context: install adds no second layer.
    assert [m.cls.__name__ for m in app.user_middleware] == ["RequestMiddleware"]
    headers = {"Authorization": f"Bearer {tokens.issue('alice')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/me", headers=headers)).json() == {"id": "alice", "bound": "alice"}
        assert (await client.get("/me")).status_code == 401
    assert get_context().principal is None


async def test_a_repeated_token_maps_to_its_principal_once_until_the_ring_changes() -> None:
    tokens = TokenService(KeyRing(JwtKey.generate("HS256", kid="k")), issuer="i", audience="a")
    mapped: list[str] = []

    def to_principal(verified: Any) -> Principal:
        mapped.append(verified.subject)
        return Principal(verified.subject, roles=frozenset({"customer"}))

    secured = APIRouter()

    @secured.get("/me")
    async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        return {"id": principal.id, "roles": sorted(principal.roles)}

    app = create_app(routers=[secured], metrics=MetricsRegistry())
    WebSecurity([BearerScheme(tokens, to_principal=to_principal)]).install(app)
    alice = {"Authorization": f"Bearer {tokens.issue('alice')}"}
    bob = {"Authorization": f"Bearer {tokens.issue('bob')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for headers in (alice, alice, bob, alice):
            response = await client.get("/me", headers=headers)
            assert response.status_code == 200
        assert response.json() == {"id": "alice", "roles": ["customer"]}
        tokens.use_ring(KeyRing(tokens.ring.signing_key))
        assert (await client.get("/me", headers=alice)).status_code == 200
    assert mapped == ["alice", "bob", "alice"]


async def test_a_route_that_would_shadow_a_chassis_route_is_refused() -> None:
    catch_all = APIRouter()

    @catch_all.get("/{path:path}")
    async def anything(path: str) -> dict[str, str]:
        return {"path": path}

    with pytest.raises(ConfigError, match=r"route ./{path:path}. also answers GET /"):
        create_app(routers=[catch_all], metrics=MetricsRegistry())
    posts_only = APIRouter()

    @posts_only.post("/{path:path}")
    async def post_anything(path: str) -> dict[str, str]:
        return {"path": path}

    app = create_app(routers=[posts_only], metrics=MetricsRegistry())  # GET routes are not shadowed
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/health/live")).json()["status"] == "pass"
        assert (await client.post("/health/live")).json() == {"path": "health/live"}
        assert (await client.get("/openapi.json")).status_code == 200
