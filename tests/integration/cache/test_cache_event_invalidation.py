"""Event-driven invalidation: in-process events and broker messages drop the entries they name."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from mainspring.cache import EventInvalidator, MemoryCache, create_cache
from mainspring.errors import ConfigError
from mainspring.events import EventBus
from mainspring.messaging import create_broker


class OrderChanged(BaseModel):
    order_id: int
    customer_id: int


class OrderCancelled(OrderChanged):
    pass


@pytest.fixture
async def cache() -> AsyncIterator[MemoryCache]:
    async with MemoryCache() as made:
        yield made


async def test_an_in_process_event_drops_keys_tags_and_prefixes(cache: MemoryCache) -> None:
    invalidator = EventInvalidator(cache).on(
        OrderChanged,
        keys=lambda e: [f"order:{e.order_id}"],
        tags=lambda e: [f"customer:{e.customer_id}"],
        prefixes=lambda e: [f"order-lines:{e.order_id}:"],
    )
    bus = EventBus()
    bus.subscribe(OrderChanged, invalidator.handle)
    await cache.set("order:1", {"total": 10})
    await cache.set("order:2", {"total": 20})
    await cache.set("customer-orders:7", [1], tags=["customer:7"])
    await cache.set("order-lines:1:a", 1)
    await cache.set("order-lines:10:a", 1)

    assert await bus.publish(OrderCancelled(order_id=1, customer_id=7)) == 1  # a subclass matches too
    assert await cache.get("order:1") is None
    assert await cache.get("order:2") == {"total": 20}
    assert await cache.get("customer-orders:7") is None
    assert await cache.get("order-lines:1:a") is None
    assert await cache.get("order-lines:10:a") == 1
    assert invalidator.handled == 1


def test_rules_that_would_do_nothing_or_everything_are_refused(cache: MemoryCache) -> None:
    invalidator = EventInvalidator(cache)
    with pytest.raises(ConfigError, match="invalidates nothing"):
        invalidator.on(OrderChanged)
    with pytest.raises(ConfigError, match="event class"):
        invalidator.on("OrderChanged", keys=lambda e: [])  # type: ignore[arg-type]


async def test_empty_prefix_is_refused_instead_of_clearing_the_cache(cache: MemoryCache) -> None:
    invalidator = EventInvalidator(cache).on(OrderChanged, prefixes=lambda e: [""])
    await cache.set("keep", 1)
    with pytest.raises(ConfigError, match="must not be empty"):
        await invalidator.handle(OrderChanged(order_id=1, customer_id=1))
    assert await cache.get("keep") == 1


@pytest.mark.integration
async def test_a_broker_message_invalidates_every_instances_l1(redis_url: str) -> None:
    namespace = f"inv-{uuid.uuid4().hex[:8]}"
    # Two service instances: memory L1 over a shared Redis L2, with the L1 invalidation channel.
    caches = [create_cache(f"memory+{redis_url}?namespace={namespace}") for _ in range(2)]
    broker = create_broker(f"memory://{uuid.uuid4().hex}", fetch_timeout=0.1)
    invalidator = EventInvalidator(caches[0]).on(OrderChanged, keys=lambda e: [f"order:{e.order_id}"])
    broker.add_subscriber("orders", invalidator.handler(OrderChanged), group="cache")
    for made in caches:
        await made.start()
    try:
        await caches[0].set("order:5", {"total": 50})
        assert await caches[1].get("order:5") == {"total": 50}  # now in instance 2's L1 too
        async with broker:
            await broker.publish("orders", OrderChanged(order_id=5, customer_id=1))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while await caches[1].get("order:5") is not None:
                assert loop.time() < deadline, "instance 2 still serves the stale order"
                await asyncio.sleep(0.02)
        assert await caches[0].get("order:5") is None
    finally:
        for made in caches:
            await made.stop()
