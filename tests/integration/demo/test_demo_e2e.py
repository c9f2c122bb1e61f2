"""The orders demo end to end over HTTP: in process on the embedded defaults and on PostgreSQL + Redis +
RabbitMQ, and once as a real uvicorn server (``mainspring demo``) stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mainspring.cache import MultiLevelCache
from mainspring.db import ChangeLog
from mainspring.demo import DemoContext, DemoSettings, SeedReport, build_app, seed
from mainspring.demo.schemas import OrderPlaced
from mainspring.demo.services import ORDERS_PLACED
from mainspring.events import InboxEntry
from mainspring.messaging import Message
from mainspring.observability import MetricsRegistry

ADMIN_PASSWORD = "admin-password-for-tests"
PASSWORD = "correct horse battery"
PROBLEM = "application/problem+json"


@dataclass
class Demo:
    client: httpx.AsyncClient
    context: DemoContext
    seeded: SeedReport

    async def register(self, email: str) -> httpx.Response:
        return await self.client.post("/auth/register", json={"email": email, "password": PASSWORD})

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return await self.client.post("/auth/login", json={"email": email, "password": password})

    async def bearer(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        response = await self.login(email, password)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self, email: str) -> dict[str, str]:
        assert (await self.register(email)).status_code == 201
        return await self.bearer(email)

    async def product_id(self, sku: str) -> int:
        products = (await self.client.get("/products")).json()
        return next(int(p["id"]) for p in products if p["sku"] == sku)


def _settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> DemoSettings:
    name = f"demo-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {
        "tracing": {"enabled": False},  # global instrumentation stays out of the test process
        "demo": {"admin_password": ADMIN_PASSWORD, "login_rate": "5/minute"},
    }
    if backend == "embedded":
        return DemoSettings(
            database={"url": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"},
            cache={"url": "memory://", "namespace": name},
            messaging={"url": f"memory://{name}"},
            **common,
        )
    return DemoSettings(
        database={"url": str(request.getfixturevalue("postgres_url").sqlalchemy_url)},
        cache={"url": str(request.getfixturevalue("redis_url")), "namespace": name},
        messaging={"url": str(request.getfixturevalue("rabbitmq_url"))},
        **common,
    )


@pytest.fixture(params=["embedded", "servers"])
async def demo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Demo]:
    """The demo started (lifespan) and seeded, with a client; ``servers``: PostgreSQL, Redis, RabbitMQ."""
    # A registry per app: the process-wide one collects the components of one app only.
    app = build_app(_settings(request.param, request, tmp_path), metrics=MetricsRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
            yield Demo(client, app.state.demo, await seed(app.state.demo))


async def _until_confirmed(demo: Demo, order_id: int, headers: dict[str, str]) -> httpx.Response:
    deadline = time.monotonic() + 15
    while True:
        response = await demo.client.get(f"/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        if response.json()["status"] == "confirmed":
            return response
        assert time.monotonic() < deadline, f"order {order_id} was never confirmed: {response.json()}"
        await asyncio.sleep(0.05)


async def test_an_order_is_placed_confirmed_by_the_subscriber_and_read_from_the_cache(demo: Demo) -> None:
    assert demo.seeded.admin_password == ADMIN_PASSWORD
    if demo.context.settings.cache.url.startswith("redis"):
        assert isinstance(demo.context.cache, MultiLevelCache)  # memory in front of Redis
    assert demo.seeded.products_added == 3
    headers = await demo.customer("ada@example.com")
    keyboard = await demo.product_id("KB-01")

    placed = await demo.client.post(
        "/orders", json={"lines": [{"product_id": keyboard, "quantity": 2}]}, headers=headers
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "placed"
    assert order["total_cents"] == 2 * 8900

    confirmed = await _until_confirmed(demo, order["id"], headers)
    hits_before = demo.context.cache.stats().hits
    again = await demo.client.get(f"/orders/{order['id']}", headers=headers)
    assert again.headers["X-Cache"] == "hit"
    assert again.json() == confirmed.json()
    assert demo.context.cache.stats().hits > hits_before

    stock = next(p for p in (await demo.client.get("/products")).json() if p["id"] == keyboard)
    assert (stock["stock"], stock["reserved"]) == (23, 2)

    # The change log holds the placement (by the customer) and the confirmation (by the subscriber).
    me = (await demo.client.get("/auth/me", headers=headers)).json()
    async with demo.context.database.session() as session:
        rows = (
            await session.scalars(
                select(ChangeLog).where(
                    ChangeLog.entity == "demo_orders", ChangeLog.entity_id == str(order["id"])
                )
            )
        ).all()
    assert [(row.action, row.actor) for row in rows] == [
        ("insert", me["id"]),
        ("update", "orders-subscriber"),
    ]
    assert rows[1].changes["status"] == ["placed", "confirmed"]

    # OrderPlaced delivered again (same message id): the inbox skips it, nothing is reserved twice.
    async with demo.context.database.session() as session:
        [message_id] = (
            await session.scalars(select(InboxEntry.message_id).where(InboxEntry.consumer == "demo-stock"))
        ).all()
    event = OrderPlaced(order_id=order["id"], customer_id=me["id"], lines=order["lines"])
    again_placed = Message(data=event.model_dump(mode="json"), type=OrderPlaced.event_type, id=message_id)
    await demo.context.broker.publish(ORDERS_PLACED, again_placed)
    deadline = time.monotonic() + 10
    while demo.context.broker.stats.duplicates_skipped < 1:
        assert time.monotonic() < deadline, "the redelivered OrderPlaced was not skipped"
        await asyncio.sleep(0.05)
    stock = next(p for p in (await demo.client.get("/products")).json() if p["id"] == keyboard)
    assert (stock["stock"], stock["reserved"]) == (23, 2)


async def test_concurrent_orders_never_take_more_stock_than_there_is(demo: Demo) -> None:
    monitor = await demo.product_id("MN-27")  # 5 in stock
    # Five customers (the login limit is 5/minute per address), two monitors each: two orders fit.
    customers = await asyncio.gather(*(demo.customer(f"c{i}@example.com") for i in range(5)))
    line = {"lines": [{"product_id": monitor, "quantity": 2}]}
    answers = await asyncio.gather(*(demo.client.post("/orders", json=line, headers=h) for h in customers))
    placed = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert 1 <= len(placed) <= 2
    assert all(a.status_code == 409 for a in refused), [a.text for a in refused]
    product = next(p for p in (await demo.client.get("/products")).json() if p["id"] == monitor)
    assert product["stock"] == 5 - 2 * len(placed)


async def test_refresh_tokens_rotate_and_a_reused_one_is_refused(demo: Demo) -> None:
    assert (await demo.register("bob@example.com")).status_code == 201
    first = (await demo.login("bob@example.com")).json()
    second = await demo.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    reused = await demo.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert reused.headers["content-type"] == PROBLEM


async def test_a_login_flood_is_answered_with_429_and_retry_after(demo: Demo) -> None:
    statuses = [(await demo.login("mallory@example.com", "not-the-password")).status_code for _ in range(5)]
    assert statuses == [401] * 5
    flooded = await demo.login("mallory@example.com", "not-the-password")
    assert flooded.status_code == 429
    assert flooded.headers["content-type"] == PROBLEM
    assert int(flooded.headers["Retry-After"]) > 0
    assert flooded.json()["status"] == 429


async def test_unauthenticated_and_forbidden_requests_get_problem_json(demo: Demo) -> None:
    ada = await demo.customer("ada@example.com")
    eve = await demo.customer("eve@example.com")
    mouse = await demo.product_id("MS-01")
    order = (
        await demo.client.post("/orders", json={"lines": [{"product_id": mouse, "quantity": 1}]}, headers=ada)
    ).json()

    anonymous = await demo.client.get(f"/orders/{order['id']}")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == PROBLEM
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    forged = await demo.client.get(f"/orders/{order['id']}", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401
    assert forged.json()["code"] == "invalid_token"

    not_owner = await demo.client.get(f"/orders/{order['id']}", headers=eve)
    assert not_owner.status_code == 403
    assert not_owner.json()["code"] == "permission_denied"
    customer_admin = await demo.client.post(
        "/products", json={"sku": "X-1", "name": "x", "price_cents": 1}, headers=ada
    )
    assert customer_admin.status_code == 403
    assert customer_admin.headers["content-type"] == PROBLEM

    # The seeded service client reads any order with its API key, and cannot place one.
    assert demo.seeded.api_key is not None
    service = {"X-API-Key": demo.seeded.api_key}
    assert (await demo.client.get(f"/orders/{order['id']}", headers=service)).status_code == 200
    denied = await demo.client.post(
        "/orders", json={"lines": [{"product_id": mouse, "quantity": 1}]}, headers=service
    )
    assert denied.status_code == 403

    # The admin issues keys and changes stock, with a version check.
    admin = await demo.bearer("admin@example.com", ADMIN_PASSWORD)
    issued = await demo.client.post("/api-keys", json={"owner": "svc-billing"}, headers=admin)
    assert issued.status_code == 201
    assert issued.json()["key"].startswith("msk_")
    product = next(p for p in (await demo.client.get("/products")).json() if p["id"] == mouse)
    stale = await demo.client.put(
        f"/products/{mouse}/stock", json={"stock": 5, "version": product["version"] - 1}, headers=admin
    )
    assert stale.status_code == 409
    assert stale.json()["code"] == "stale_version"
    fresh = await demo.client.put(
        f"/products/{mouse}/stock", json={"stock": 5, "version": product["version"]}, headers=admin
    )
    assert fresh.status_code == 200
    assert fresh.json()["stock"] == 5

    too_many = await demo.client.post(
        "/orders", json={"lines": [{"product_id": mouse, "quantity": 6}]}, headers=ada
    )
    assert too_many.status_code == 409
    assert too_many.json()["code"] == "insufficient_stock"
    invalid = await demo.client.post("/orders", json={"lines": []}, headers=ada)
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == PROBLEM
    taken = await demo.register("ada@example.com")
    assert taken.status_code == 409
    assert taken.headers["content-type"] == PROBLEM


async def test_health_and_metrics_answer(demo: Demo) -> None:
    ready = await demo.client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) >= {"database", "cache", "broker", "outbox"}
    await demo.client.get("/products")
    metrics = (await demo.client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/products"' in metrics.replace(", ", ",")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_mainspring_demo_serves_over_http_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAINSPRING_")}
    out = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from mainspring.cli import main; main()", "demo", "--port", str(port)],
        cwd=tmp_path,  # the SQLite file lands here
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "demo.log").read_text()
            assert time.monotonic() < deadline, "the demo did not come up"
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=10) as client:
            credentials = {"email": "ada@example.com", "password": PASSWORD}
            assert client.post("/auth/register", json=credentials).status_code == 201
            token = client.post("/auth/login", json=credentials).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            placed = client.post(
                "/orders", json={"lines": [{"product_id": 1, "quantity": 1}]}, headers=headers
            )
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            while client.get(f"/orders/{order_id}", headers=headers).json()["status"] != "confirmed":
                assert time.monotonic() < deadline + 15, "the order was never confirmed"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
    log = (tmp_path / "demo.log").read_text()
    assert f"{base}/docs" in log
    assert "admin@example.com  password:" in log
    assert "demo.orders.place" in log  # the console span exporter printed the placement's span
    assert (tmp_path / "mainspring-demo.db").exists()
