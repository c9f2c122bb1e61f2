"""The in-process event bus and the outbox event bus's routing."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from mainspring.db import Database
from mainspring.errors import ConfigError
from mainspring.events import EventBus, Outbox, TransactionalOutboxEventBus


class OrderEvent(BaseModel):
    order_id: int


class OrderPlaced(OrderEvent):
    event_type: ClassVar[str] = "orders.placed.v1"


class OrderCancelled(OrderEvent):
    pass


async def test_handlers_get_their_type_and_subtypes_sync_and_async() -> None:
    bus = EventBus()
    got: list[tuple[str, Any]] = []

    @bus.handler(OrderPlaced)
    async def placed(event: OrderPlaced) -> None:
        got.append(("placed", event.order_id))

    bus.subscribe(OrderEvent, lambda event: got.append(("any", event.order_id)))

    assert await bus.publish(OrderPlaced(order_id=1)) == 2
    assert await bus.publish(OrderCancelled(order_id=2)) == 1
    assert got == [("placed", 1), ("any", 1), ("any", 2)]


async def test_a_failing_handler_is_logged_and_does_not_stop_the_others(
    captured_logs: list[dict[str, Any]],
) -> None:
    bus = EventBus()
    got: list[int] = []

    def broken(event: OrderPlaced) -> None:
        raise RuntimeError("mail server down")

    bus.subscribe(OrderPlaced, broken)
    bus.subscribe(OrderPlaced, lambda event: got.append(event.order_id))
    assert await bus.publish(OrderPlaced(order_id=3)) == 1
    assert got == [3]
    assert bus.stats.failed == 1
    failure = next(e for e in captured_logs if e["event"] == "event handler failed")
    assert failure["event_type"] == "orders.placed.v1"
    assert "mail server down" in failure["error"]


async def test_unsubscribe_and_bad_subscriptions() -> None:
    bus = EventBus()
    got: list[int] = []
    unsubscribe = bus.subscribe(OrderPlaced, lambda event: got.append(event.order_id))
    unsubscribe()
    unsubscribe()  # twice is harmless
    assert await bus.publish(OrderPlaced(order_id=1)) == 0
    assert got == []
    with pytest.raises(ConfigError):
        bus.subscribe("OrderPlaced", print)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        bus.subscribe(OrderPlaced, "not callable")  # type: ignore[arg-type]


def test_outbox_event_bus_routes_events_to_topics() -> None:
    outbox = Outbox(Database("sqlite+aiosqlite://"))
    assert TransactionalOutboxEventBus(outbox).topic_of(OrderPlaced(order_id=1)) == "orders.placed.v1"
    assert (
        TransactionalOutboxEventBus(outbox, topic="orders").topic_of(OrderCancelled(order_id=1)) == "orders"
    )
    routed = TransactionalOutboxEventBus(outbox, topic={OrderEvent: "order-events"})
    assert routed.topic_of(OrderCancelled(order_id=1)) == "order-events"
    by_function = TransactionalOutboxEventBus(outbox, topic=lambda e: f"orders-{e.order_id % 2}")
    assert by_function.topic_of(OrderPlaced(order_id=3)) == "orders-1"
