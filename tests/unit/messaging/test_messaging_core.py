"""The broker on the memory transport: codecs, policies, handler shapes, breaker, bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from mainspring.errors import BadRequestError, ConfigError
from mainspring.messaging import (
    AvroCodec,
    Broker,
    IncompatibleSchemaError,
    JsonCodec,
    Message,
    MsgpackCodec,
    RetryPolicy,
    create_broker,
    uuid7,
)
from mainspring.messaging._redis_streams import entry_fields, entry_record
from mainspring.messaging._transport import DLQ_REASON, SCHEMA_FINGERPRINT, Record
from mainspring.messaging.memory import MemoryTransport
from mainspring.resilience import CircuitBreaker, CircuitState

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "order_id", "type": "long"}, {"name": "customer", "type": "string"}],
}
# v2 adds a field with a default: readable from v1 data.
ORDER_V2 = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "channel", "type": "string", "default": "web"},
    ],
}
# v3 adds a field without a default: v1 data cannot be read as v3.
ORDER_V3 = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "region", "type": "string"},
    ],
}


class Order(BaseModel):
    event_type: ClassVar[str] = "orders.v1"
    order_id: int
    customer: str


def _broker(**options: Any) -> Broker:
    return Broker(MemoryTransport(f"memory://{uuid.uuid4().hex}"), fetch_timeout=0.1, **options)


async def _until(predicate: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- ids, messages, policies ------------------------------------------------------------------


def test_uuid7_is_version_7_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"key": 5}, "key"),
        ({"time": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"id": ""}, "non-empty"),
    ],
)
def test_bad_message_fields_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequestError, match=match):
        Message(data={}, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff": -1}, "backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 2}, "jitter"),
        ({"max_delay": 0.1, "backoff": 1}, "max_delay"),
        ({"retry_on": "boom"}, "exception types"),
    ],
)
def test_bad_retry_policy_is_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RetryPolicy(**options)


def test_retry_delays_grow_exponentially_within_bounds() -> None:
    policy = RetryPolicy(backoff=1, multiplier=2, max_delay=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000) == 10  # no overflow
    jittered = RetryPolicy(backoff=1, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.5 for _ in range(200))
    classified = RetryPolicy(retry_on=(OSError,), dont_retry_on=FileNotFoundError)
    assert classified.is_retryable(ConnectionError())
    assert not classified.is_retryable(FileNotFoundError())
    assert not classified.is_retryable(ValueError())


# -- codecs -----------------------------------------------------------------------------------


def test_codecs_round_trip() -> None:
    value = {"order_id": 1, "customer": "ada"}
    for codec in (JsonCodec(), MsgpackCodec()):
        body, headers = codec.encode(Order(**value))
        assert codec.decode(body, headers) == value
    avro = AvroCodec(ORDER_V1)
    body, headers = avro.encode(value)
    assert headers[SCHEMA_FINGERPRINT] == avro.fingerprint
    assert avro.decode(body, headers) == value


def test_avro_resolves_known_older_writers_and_refuses_the_rest() -> None:
    writer = AvroCodec(ORDER_V1)
    body, headers = writer.encode({"order_id": 1, "customer": "ada"})
    reader = AvroCodec(ORDER_V2, writer_schemas=[ORDER_V1])
    assert reader.decode(body, headers) == {"order_id": 1, "customer": "ada", "channel": "web"}
    with pytest.raises(IncompatibleSchemaError, match="unknown schema"):
        AvroCodec(ORDER_V2).decode(body, headers)
    with pytest.raises(IncompatibleSchemaError, match="cannot be read"):
        AvroCodec(ORDER_V3, writer_schemas=[ORDER_V1]).decode(body, headers)
    with pytest.raises(ConfigError, match="invalid Avro schema"):
        AvroCodec({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]})


def test_unencodable_payloads_are_refused_before_publishing() -> None:
    with pytest.raises(BadRequestError, match="JSON-serializable"):
        JsonCodec().encode({"when": object()})
    with pytest.raises(BadRequestError, match="raw bytes"):
        JsonCodec().encode(b"\x00")
    with pytest.raises(BadRequestError, match="Avro schema"):
        AvroCodec(ORDER_V1).encode({"order_id": "x"})


async def test_incompatible_avro_schema_goes_to_the_dead_letters() -> None:
    producer_codec = AvroCodec(ORDER_V1)
    broker = _broker(codec=producer_codec, codecs=[AvroCodec(ORDER_V3)])
    calls: list[Any] = []

    @broker.subscriber("orders", group="g")
    async def handle(message: Message) -> None:
        calls.append(message.data)

    async with broker:
        await broker.publish("orders", {"order_id": 1, "customer": "ada"})
        await _until(lambda: broker.stats.dead_lettered == 1)
        dead = await broker.transport.browse("orders.dlq", limit=5)
    assert calls == []
    assert dead[0].headers[DLQ_REASON] == "incompatible_schema"


# -- handler shapes ---------------------------------------------------------------------------


async def test_handler_shapes_bytes_plain_data_and_sync() -> None:
    broker = _broker()
    got: dict[str, Any] = {}

    @broker.subscriber("t", group="raw")
    async def raw(body: bytes) -> None:
        got["raw"] = body

    @broker.subscriber("t", group="plain")
    async def plain(data: dict[str, Any]) -> None:
        got["plain"] = data

    @broker.subscriber("t", group="sync")
    def sync(message: Message) -> None:
        got["sync"] = message.data

    async with broker:
        await broker.publish("t", {"a": 1})
        await _until(lambda: len(got) == 3)
    assert got == {"raw": b'{"a":1}', "plain": {"a": 1}, "sync": {"a": 1}}


def test_bad_subscriptions_are_refused_at_registration() -> None:
    broker = _broker()

    async def no_args() -> None: ...

    async def two_models(a: Order, b: Order) -> None: ...

    async def ok(message: Message) -> None: ...

    with pytest.raises(ConfigError, match="one argument"):
        broker.add_subscriber("t", no_args)
    with pytest.raises(ConfigError, match="annotated as Message"):
        broker.add_subscriber("t", two_models)
    with pytest.raises(ConfigError, match="consumer group"):
        broker.add_subscriber("t", ok, group="has.dot")
    with pytest.raises(ConfigError, match="concurrency"):
        broker.add_subscriber("t", ok, concurrency=0)
    with pytest.raises(ConfigError, match="inbox"):
        broker.add_subscriber("t", ok, inbox=True)
    with pytest.raises(BadRequestError, match="invalid topic"):
        broker.add_subscriber("bad topic", ok)
    broker.add_subscriber("t", ok, group="g")
    with pytest.raises(ConfigError, match="already has a subscriber"):
        broker.add_subscriber("t", ok, group="g")


def test_default_group_is_the_handlers_qualified_name() -> None:
    broker = _broker()

    async def on_order(message: Message) -> None: ...

    info = broker.add_subscriber("orders", on_order)
    assert info.group.endswith("on_order")
    assert "." not in info.group


@pytest.mark.parametrize("url", ["nope", "ftp://x", "memory://x?bogus=1", "memory://x?retention=abc"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        create_broker(url)


async def test_publish_refuses_a_key_that_contradicts_the_message() -> None:
    broker = _broker()
    async with broker:
        with pytest.raises(BadRequestError, match="conflicts"):
            await broker.publish("t", Message(data={}, key="a"), key="b")
        with pytest.raises(BadRequestError, match="str to str"):
            await broker.publish("t", {}, headers={"n": 1})  # type: ignore[dict-item]
        with pytest.raises(BadRequestError, match="str to str"):
            await broker.publish("t", Message(data={}, headers={"a": 1}))  # type: ignore[dict-item]


async def test_without_dlq_an_exhausted_message_is_dropped_and_logged(
    captured_logs: list[dict[str, Any]],
) -> None:
    broker = _broker()

    @broker.subscriber("t", group="g", dlq=False, retry=RetryPolicy(max_attempts=1))
    async def fail(message: Message) -> None:
        raise RuntimeError("nope")

    async with broker:
        await broker.publish("t", {"a": 1})
        await _until(lambda: broker.stats.failed == 1)
        await asyncio.sleep(0.05)
        assert await broker.transport.browse("t.dlq", limit=5) == []
    assert any("dropped" in e["event"] for e in captured_logs)


async def test_open_breaker_pauses_fetching_and_a_probe_resumes_it() -> None:
    clock = [0.0]
    breaker = CircuitBreaker("dep", minimum_calls=2, window_size=2, open_duration=5, clock=lambda: clock[0])
    broker = _broker()
    healthy = asyncio.Event()
    seen: list[int] = []

    @broker.subscriber("jobs", group="g", breaker=breaker, retry=RetryPolicy(max_attempts=50, backoff=0.01))
    async def handle(message: Message) -> None:
        seen.append(message.data["n"])
        if not healthy.is_set():
            raise ConnectionError("dependency down")

    async with broker:
        await broker.publish_batch("jobs", [{"n": n} for n in range(5)])
        await _until(lambda: breaker.state is CircuitState.OPEN)
        calls_when_opened = len(seen)
        await asyncio.sleep(0.3)
        assert len(seen) == calls_when_opened, "an open breaker stops fetching"
        healthy.set()
        clock[0] += 6  # open_duration passed: half-open, one probe goes through
        await _until(lambda: sorted(set(seen)) == [0, 1, 2, 3, 4] and broker.stats.handled == 5)
    assert breaker.state is CircuitState.CLOSED


async def test_the_observer_hears_each_delivery_outcome() -> None:
    heard: list[tuple[str, str, str, bool]] = []
    broker = _broker()
    broker.observer = lambda topic, group, outcome, seconds: heard.append(
        (topic, group, outcome, seconds is not None)
    )

    @broker.subscriber("t", group="g", retry=RetryPolicy(max_attempts=2, backoff=0.01, jitter=0))
    async def handle(message: Message) -> None:
        if message.data["fail"]:
            raise RuntimeError("no")

    async with broker:
        await broker.publish("t", {"fail": False})
        await broker.publish("t", {"fail": True})
        await _until(lambda: broker.stats.dead_lettered == 1 and broker.stats.handled == 1)
    assert sorted(heard) == [
        ("t", "g", "dead_lettered", False),
        ("t", "g", "handled", True),
        ("t", "g", "retried", False),
    ]


async def test_a_default_prefetch_follows_the_handlers_pace_and_a_given_one_is_kept() -> None:
    broker = _broker()

    @broker.subscriber("fast", group="g")
    async def fast(message: Message) -> None:
        return None

    @broker.subscriber("slow", group="g")
    async def slow(message: Message) -> None:
        await asyncio.sleep(0.1)

    @broker.subscriber("given", group="g", prefetch=7)
    async def given(message: Message) -> None:
        await asyncio.sleep(0.1)

    async with broker:
        runners = {runner.info.topic: runner for runner in broker._runners}
        assert runners["fast"].limit == runners["slow"].limit == 2  # 2 per lane until it knows better
        assert runners["given"].limit == 7
        await broker.publish_batch("fast", [{"n": n} for n in range(300)])
        await broker.publish_batch("slow", [{"n": n} for n in range(4)])
        await broker.publish_batch("given", [{"n": n} for n in range(4)])
        await _until(lambda: broker.stats.handled >= 300 + 3 + 3)
        # A fast handler may have (about) the whole default ceiling of 100; a 0.1 s one about a
        # second of work. (Not exactly 100: a stall of the test machine counts as handler time.)
        assert runners["fast"].limit >= 50
        assert 2 <= runners["slow"].limit <= 10
        assert runners["given"].limit == 7


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


@given(
    body=st.binary(max_size=50),
    headers=st.dictionaries(_TEXT, _TEXT, max_size=8),
    key=st.none() | _TEXT,
)
def test_redis_stream_entries_round_trip_records(
    body: bytes, headers: dict[str, str], key: str | None
) -> None:
    record = Record("orders", body, headers, key=key)
    fields = entry_fields(record)
    assert len(fields) <= 3  # the headers travel in one field, however many there are
    assert entry_record("orders", fields) == record
