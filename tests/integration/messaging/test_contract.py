"""The messaging contract: every backend (memory, Redis Streams, RabbitMQ, NATS JetStream, Kafka) passes it.

Each test starts its subscribers before publishing (RabbitMQ keeps a record only for the queues bound
when it is published), uses its own topics and groups, and waits with ``eventually`` instead of
sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from mainspring.context import bind_context, get_context
from mainspring.messaging import Broker, Message, RetryPolicy
from mainspring.messaging._transport import (
    ATTEMPT,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_FIRST_FAILURE,
    DLQ_GROUP,
    DLQ_LAST_FAILURE,
    DLQ_REASON,
    DLQ_TOPIC,
    DLQ_TRACEBACK,
)

Eventually = Callable[..., Any]
MakeBroker = Callable[..., Broker]


class OrderPlaced(BaseModel):
    event_type: ClassVar[str] = "orders.placed.v1"

    order_id: int
    customer: str


class Flaky(RuntimeError):
    """A failure the tests raise on purpose."""


async def test_publish_and_consume_carries_attributes(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker(source="contract-tests")
    seen: list[Message] = []

    @broker.subscriber("orders", group="reader")
    async def handle(message: Message) -> None:
        seen.append(message)

    async with broker:
        sent = await broker.publish("orders", {"n": 1}, key="k1", headers={"x-tenant": "acme"})
        await eventually(lambda: len(seen) == 1, what="the message")
    got = seen[0]
    assert got.id == sent.id
    assert got.data == {"n": 1}
    assert got.key == "k1"
    assert got.type == "orders"
    assert got.source == "contract-tests"
    assert got.headers["x-tenant"] == "acme"
    assert got.correlation_id == sent.id  # no context: the message starts its own correlation
    assert got.content_type == "application/json"
    assert got.attempt == 1
    assert got.topic == "orders"


async def test_typed_handler_gets_a_validated_model(make_broker: MakeBroker, eventually: Eventually) -> None:
    broker = make_broker()
    seen: list[tuple[OrderPlaced, Message]] = []

    @broker.subscriber("orders", group="typed")
    async def handle(event: OrderPlaced, message: Message) -> None:
        seen.append((event, message))

    async with broker:
        await broker.publish("orders", OrderPlaced(order_id=7, customer="ada"))
        await eventually(lambda: len(seen) == 1, what="the event")
    event, message = seen[0]
    assert event == OrderPlaced(order_id=7, customer="ada")
    assert message.type == "orders.placed.v1"


async def test_batch_keeps_order_per_key_with_concurrency(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    seen: dict[str, list[int]] = {}

    @broker.subscriber("ticks", group="ordered", concurrency=4)
    async def handle(message: Message) -> None:
        await asyncio.sleep(0.001 * (message.data["n"] % 3))  # uneven handler times
        seen.setdefault(message.key or "", []).append(message.data["n"])

    keys = ["a", "b", "c"]
    async with broker:
        await broker.publish_batch("ticks", [Message(data={"n": n}, key=keys[n % 3]) for n in range(60)])
        await eventually(lambda: sum(map(len, seen.values())) == 60, what="all 60 messages")
    for index, key in enumerate(keys):
        assert seen[key] == list(range(index, 60, 3)), f"key {key} out of order"


async def test_failed_message_is_retried_after_a_delay(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    attempts: list[tuple[int, float]] = []

    @broker.subscriber("payments", group="retrying", retry=RetryPolicy(max_attempts=3, backoff=0.4, jitter=0))
    async def handle(message: Message) -> None:
        attempts.append((message.attempt, time.monotonic()))
        if message.attempt < 3:
            raise Flaky("try again")

    async with broker:
        await broker.publish("payments", {"id": 1})
        await eventually(lambda: len(attempts) == 3, what="three attempts")
        await asyncio.sleep(0.3)
        dead = await broker.transport.browse("payments.dlq", limit=10)
    assert [a for a, _ in attempts] == [1, 2, 3]
    # Redelivered after the backoff (0.4 s, then 0.8 s), never in a tight loop.
    assert attempts[1][1] - attempts[0][1] >= 0.35
    assert attempts[2][1] - attempts[1][1] >= 0.7
    assert broker.stats.retried == 2
    assert broker.stats.handled == 1
    assert dead == []


async def test_exhausted_message_goes_to_the_dead_letters_with_details(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    calls: list[int] = []

    @broker.subscriber("mail", group="sender", retry=RetryPolicy(max_attempts=2, backoff=0.1, jitter=0))
    async def handle(message: Message) -> None:
        calls.append(message.attempt)
        raise Flaky(f"smtp down for {message.data['to']}")

    async with broker:
        sent = await broker.publish("mail", {"to": "ada@example.com"}, headers={"x-origin": "test"})
        await eventually(lambda: broker.stats.dead_lettered == 1, what="the dead letter")
        dead = await broker.transport.browse("mail.dlq", limit=10)
    assert calls == [1, 2]
    assert len(dead) == 1
    record = dead[0]
    assert record.topic == "mail.dlq"
    headers = record.headers
    assert headers["ce_id"] == sent.id
    assert headers["x-origin"] == "test"
    assert headers[DLQ_REASON] == "exhausted"
    assert headers[DLQ_ERROR_TYPE].endswith("Flaky")
    assert headers[DLQ_ERROR_MESSAGE] == "smtp down for ada@example.com"
    assert "handle" in headers[DLQ_TRACEBACK]
    assert headers[ATTEMPT] == "2"
    assert headers[DLQ_GROUP] == "sender"
    assert headers[DLQ_TOPIC] == "mail"
    assert headers[DLQ_FIRST_FAILURE] <= headers[DLQ_LAST_FAILURE]
    assert b"ada@example.com" in record.body


async def test_non_retryable_error_is_dead_lettered_at_once(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=5, backoff=0.1, dont_retry_on=ValueError)

    @broker.subscriber("imports", group="parser", retry=policy)
    async def handle(message: Message) -> None:
        calls.append(message.attempt)
        raise ValueError("row 3 is malformed")

    async with broker:
        await broker.publish("imports", {"rows": 3})
        await eventually(lambda: broker.stats.dead_lettered == 1, what="the dead letter")
        dead = await broker.transport.browse("imports.dlq", limit=10)
    assert calls == [1]
    assert dead[0].headers[DLQ_REASON] == "non_retryable"
    assert dead[0].headers[ATTEMPT] == "1"


async def test_invalid_payload_is_dead_lettered_without_calling_the_handler(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    calls: list[OrderPlaced] = []

    @broker.subscriber("orders", group="strict")
    async def handle(event: OrderPlaced) -> None:
        calls.append(event)

    async with broker:
        await broker.publish("orders", {"order_id": "not a number"})
        await broker.publish("orders", OrderPlaced(order_id=2, customer="bob"))
        await eventually(lambda: len(calls) == 1 and broker.stats.dead_lettered == 1, what="both outcomes")
        dead = await broker.transport.browse("orders.dlq", limit=10)
    assert calls == [OrderPlaced(order_id=2, customer="bob")]
    assert dead[0].headers[DLQ_REASON] == "invalid_payload"
    assert (
        "order_id" in dead[0].headers[DLQ_ERROR_MESSAGE] or "validate" in dead[0].headers[DLQ_ERROR_MESSAGE]
    )


async def test_delayed_publish_is_not_delivered_early(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()
    received: list[float] = []

    @broker.subscriber("reminders", group="later")
    async def handle(message: Message) -> None:
        received.append(time.monotonic())

    async with broker:
        sent_at = time.monotonic()
        await broker.publish("reminders", {"r": 1}, delay=1.0)
        await eventually(lambda: len(received) == 1, what="the delayed message")
    assert received[0] - sent_at >= 0.9


async def test_context_is_propagated_and_restored(make_broker: MakeBroker, eventually: Eventually) -> None:
    broker = make_broker()
    seen: dict[str, Any] = {}

    @broker.subscriber("first", group="ctx")
    async def first(message: Message) -> None:
        seen["first"] = (get_context().correlation_id, get_context().causation_id, message.id)
        await broker.publish("second", {"step": 2})

    @broker.subscriber("second", group="ctx")
    async def second(message: Message) -> None:
        seen["second"] = (get_context().correlation_id, message.causation_id)

    async with broker:
        with bind_context(correlation_id="corr-123"):
            await broker.publish("first", {"step": 1})
        await eventually(lambda: "second" in seen, what="the chained message")
    correlation, causation, first_id = seen["first"]
    assert correlation == "corr-123"
    assert causation == first_id
    assert seen["second"] == ("corr-123", first_id)
    assert get_context().correlation_id is None  # nothing leaks out of the handlers


async def test_groups_each_get_everything_and_members_share(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    brokers = [make_broker() for _ in range(3)]
    got: dict[str, list[str]] = {"a": [], "b": []}

    def register(broker: Broker, group: str) -> None:
        @broker.subscriber("events", group=group)
        async def handle(message: Message) -> None:
            got[group].append(message.id)

    register(brokers[0], "a")
    register(brokers[1], "a")
    register(brokers[2], "b")
    for broker in brokers:
        await broker.start()
    sent = await brokers[0].publish_batch("events", [{"n": n} for n in range(20)])
    ids = sorted(m.id for m in sent)
    await eventually(lambda: len(got["a"]) >= 20 and len(got["b"]) >= 20, what="both groups")
    await asyncio.sleep(0.3)
    assert sorted(got["a"]) == ids  # each message once in group a, whichever member took it
    assert sorted(got["b"]) == ids


async def test_graceful_stop_finishes_in_flight_and_releases_the_rest(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    first = make_broker()
    done_first: list[int] = []
    started = asyncio.Event()

    @first.subscriber("jobs", group="workers", concurrency=2, prefetch=8)
    async def slow(message: Message) -> None:
        started.set()
        await asyncio.sleep(0.5)
        done_first.append(message.data["n"])

    await first.start()
    await first.publish_batch("jobs", [{"n": n} for n in range(8)])
    await asyncio.wait_for(started.wait(), 20)
    await first.stop(drain_timeout=10)
    assert done_first, "in-flight handlers must finish during the drain"

    second = make_broker()
    done_second: list[int] = []

    @second.subscriber("jobs", group="workers")
    async def fast(message: Message) -> None:
        done_second.append(message.data["n"])

    async with second:
        await eventually(lambda: len(done_first) + len(done_second) >= 8, what="the released jobs")
        await asyncio.sleep(0.5)
    assert sorted(done_first + done_second) == list(range(8))  # nothing lost, nothing handled twice


async def test_message_of_a_cancelled_handler_is_redelivered(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    first = make_broker()
    entered = asyncio.Event()

    @first.subscriber("tasks", group="g")
    async def stuck(message: Message) -> None:
        entered.set()
        await asyncio.Event().wait()  # never finishes: the consumer dies mid-handler

    await first.start()
    sent = await first.publish("tasks", {"t": 1})
    await asyncio.wait_for(entered.wait(), 20)
    await first.stop(drain_timeout=0)  # cancels the handler before it acks

    second = make_broker()
    redelivered: list[str] = []

    @second.subscriber("tasks", group="g")
    async def handle(message: Message) -> None:
        redelivered.append(message.id)

    async with second:
        await eventually(lambda: redelivered == [sent.id], what="the redelivery")


async def test_dead_letters_can_be_browsed_and_purged(
    make_broker: MakeBroker, eventually: Eventually
) -> None:
    broker = make_broker()

    @broker.subscriber("audit", group="g", retry=RetryPolicy(max_attempts=1))
    async def handle(message: Message) -> None:
        raise Flaky("no")

    async with broker:
        await broker.publish_batch("audit", [{"n": n} for n in range(3)])
        await eventually(lambda: broker.stats.dead_lettered == 3, what="three dead letters")
        assert len(await broker.transport.browse("audit.dlq", limit=2)) == 2
        assert len(await broker.transport.browse("audit.dlq", limit=10)) == 3  # browsing consumed nothing
        assert await broker.transport.purge("audit.dlq") == 3
        assert await broker.transport.browse("audit.dlq", limit=10) == []


@pytest.mark.parametrize("delay", [-1, float("nan"), "1"])
async def test_bad_delay_is_refused(make_broker: MakeBroker, delay: Any) -> None:
    from mainspring.errors import BadRequestError

    broker = make_broker()
    async with broker:
        with pytest.raises(BadRequestError, match="delay"):
            await broker.publish("orders", {"n": 1}, delay=delay)
