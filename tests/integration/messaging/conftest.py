"""Fixtures of the messaging contract suite: brokers of one backend, isolated per test.

Each backend gets its URL from the test kit (a Redis database number, a RabbitMQ vhost, a NATS
prefix, a Kafka topic prefix on the mock cluster) and the short timeouts it needs to keep the suite
fast (``FAST_OPTIONS``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mainspring.messaging import Broker, create_broker

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.integration),
    pytest.param("nats", id="nats", marks=pytest.mark.integration),
    pytest.param("kafka", id="kafka", marks=pytest.mark.integration),
]

# Short claim / redelivery timeouts so that "a consumer died" tests finish in seconds.
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "memory": {},
    "redis": {"claim_idle": 1.0},
    "rabbitmq": {},
    "nats": {"ack_wait": 2.0},
    # An idle fetch on the mock cluster waits the whole fetch.wait.max.ms: keep it short; a short
    # session so that a member that left is noticed in seconds.
    "kafka": {"consumer_options": {"fetch.wait.max.ms": 10}, "session_timeout": 2.0},
}

_URL_FIXTURES = {"redis": "redis_url", "rabbitmq": "rabbitmq_url", "nats": "nats_url", "kafka": "kafka_url"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def transport_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The broker URL of the backend under test, isolated for this test."""
    if backend == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return str(request.getfixturevalue(_URL_FIXTURES[backend]))


@pytest.fixture
def transport_options(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Backend options for fast tests, plus the isolation prefix where the backend needs one."""
    options = dict(FAST_OPTIONS[backend])
    if backend in ("nats", "kafka"):
        url = request.getfixturevalue(_URL_FIXTURES[backend])
        options["prefix"] = url.namespace
    if backend == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        if url.isolation == "prefix":  # no management API: a shared vhost, so prefix the names
            options["prefix"] = url.namespace
    return options


@pytest.fixture
async def make_broker(
    transport_url: str, transport_options: dict[str, Any]
) -> AsyncIterator[Callable[..., Broker]]:
    """Build brokers on the backend under test (not started); each is stopped after the test."""
    made: list[Broker] = []

    def build(**options: Any) -> Broker:
        merged = {**transport_options, "fetch_timeout": 0.5, "drain_timeout": 5.0, **options}
        broker = create_broker(transport_url, **merged)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        await broker.stop(drain_timeout=0)


async def _eventually(
    predicate: Callable[[], bool], *, within: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """``await eventually(predicate, within=..., what=...)``: wait until true or fail the test."""
    return _eventually
