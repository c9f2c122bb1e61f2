"""The NATS JetStream transport against a real nats-server: groups, retries, dead consumers, DLQ, faults.

Faults go through a TCP proxy in front of the shared server, so a test can cut its own connections (or
refuse new ones) without touching anybody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from mainspring.errors import BadRequestError, ConfigError, ServiceUnavailableError
from mainspring.messaging._transport import CE_ID, Record
from mainspring.messaging.nats import NatsTransport
from mainspring.testing import ServiceURL

pytestmark = [pytest.mark.integration]

ACK_WAIT = 1.0

Factory = Callable[..., Awaitable[NatsTransport]]


def record(topic: str, body: str, **headers: str) -> Record:
    return Record(topic, body.encode(), {CE_ID: uuid.uuid4().hex, **headers})


@pytest.fixture
async def make_transport(nats_url: ServiceURL) -> AsyncIterator[Factory]:
    """Start transports on this test's prefix (optionally through another URL); stop them afterwards."""
    started: list[NatsTransport] = []

    async def make(url: str | None = None, **options: Any) -> NatsTransport:
        options = {"prefix": nats_url.namespace, "ack_wait": ACK_WAIT, **options}
        transport = NatsTransport(url or str(nats_url), **options)
        await transport.start()
        started.append(transport)
        return transport

    yield make
    for transport in started:
        await transport.stop()


async def drain(subscription: Any, count: int, *, within: float = 10.0, ack: bool = True) -> list[Any]:
    """Fetch until ``count`` deliveries arrived (acking them) or ``within`` seconds passed."""
    got: list[Any] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        batch = await subscription.fetch(count - len(got), 0.5)
        for delivery in batch:
            if ack:
                await delivery.ack()
        got.extend(batch)
    return got


class Proxy:
    """A TCP proxy to the NATS server that can cut every connection and refuse new ones."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 4222
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        writers = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            writers.append(up_writer)
            self.writers.update(writers)
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for w in writers:
                self.writers.discard(w)
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            self.handlers.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        """Close every proxied connection (both sides), as a server restart would."""
        for writer in list(self.writers):
            writer.close()

    async def stop(self) -> None:
        """Cut the connections and stop listening (an outage)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.cut()
        await asyncio.gather(*self.handlers, return_exceptions=True)


@pytest.fixture
async def proxy(nats_url: ServiceURL) -> AsyncIterator[Proxy]:
    p = Proxy(str(nats_url))
    await p.start()
    yield p
    await p.stop()


# --- names and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://127.0.0.1:6379", {}),
        ("nats://", {}),
        ("nats://127.0.0.1:notaport", {}),
        ("nats://127.0.0.1:4222", {"ack_wait": 0}),
        ("nats://127.0.0.1:4222", {"publish_timeout": -1}),
        ("nats://127.0.0.1:4222", {"max_deliver": 0}),
        ("nats://127.0.0.1:4222", {"storage": "disk"}),
        ("nats://127.0.0.1:4222", {"replicas": 0}),
        ("nats://127.0.0.1:4222", {"prefix": "bad prefix"}),
        ("nats://127.0.0.1:4222", {"prefix": "a..b"}),
    ],
)
def test_bad_url_or_option_is_a_config_error(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        NatsTransport(url, **options)


def test_names_map_dots_to_underscores_under_the_prefix() -> None:
    transport = NatsTransport("nats://127.0.0.1:4222", prefix="acme")
    assert transport.subject("orders.dlq") == "acme.orders.dlq"
    assert transport.stream_name("orders.dlq") == "acme_orders_dlq"
    assert transport.consumer_name("billing.v2") == "billing_v2"
    assert NatsTransport("nats://127.0.0.1:4222/acme").subject("orders") == "acme.orders"
    with pytest.raises(BadRequestError, match="invalid topic"):
        transport.subject("orders.*")


async def test_unreachable_server_is_service_unavailable_on_start() -> None:
    transport = NatsTransport("nats://127.0.0.1:1", connect_timeout=0.5)
    with pytest.raises(ServiceUnavailableError, match="cannot reach JetStream"):
        await transport.start()
    await transport.stop()


async def test_topics_whose_names_clash_are_refused(make_transport: Factory) -> None:
    transport = await make_transport()
    await transport.publish([record("a.b", "x")])
    with pytest.raises(ConfigError, match="clashes"):
        await transport.publish([record("a_b", "y")])


# --- publish and consume --------------------------------------------------------------------------


async def test_published_records_arrive_in_order_with_headers_and_key(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "billing", prefetch=10)
    odd = {"note": "é ünïcode\nsecond line", "pad": " leading", "looks": "=?utf-8?b?eA==?="}
    records = [record("orders", f"m{i}", **odd) for i in range(20)]
    records[3] = Record("orders", b"keyed", {CE_ID: "k-1"}, key="customer-7")
    await transport.publish(records)

    got = await drain(subscription, 20)

    assert [d.record.body for d in got] == [r.body for r in records]
    assert got[0].record.headers == records[0].headers
    assert got[3].record.key == "customer-7"
    assert all(d.attempt == 1 for d in got)
    assert await subscription.fetch(10, 0.2) == []


async def test_a_record_above_max_payload_is_refused_and_nothing_of_the_batch_is_sent(
    make_transport: Factory,
) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    huge = Record("orders", b"x" * (2 * 1024 * 1024), {CE_ID: "huge"})
    with pytest.raises(BadRequestError, match="max_payload"):
        await transport.publish([record("orders", "small"), huge])
    assert await subscription.fetch(5, 0.2) == []


async def test_a_header_name_nats_cannot_carry_is_refused_every_time(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    await transport.publish([record("orders", "fine", **{"x-trace": "1"})])  # checked once, remembered
    for _ in range(2):  # a refused name is not remembered as checked
        for bad in ("Nats-Expected-Stream", "with space"):
            with pytest.raises(BadRequestError, match="cannot travel on NATS"):
                await transport.publish([Record("orders", b"bad", {CE_ID: uuid.uuid4().hex, bad: "v"})])
    (delivery,) = await drain(subscription, 1)
    assert delivery.record.headers["x-trace"] == "1"
    assert await subscription.fetch(5, 0.2) == []


async def test_publish_declares_the_stream_again_after_it_was_deleted(make_transport: Factory) -> None:
    transport = await make_transport()
    await transport.publish([record("orders", "first")])  # declares the stream and remembers it
    await transport._jsm.delete_stream(transport.stream_name("orders"))
    await transport.publish([record("orders", "second")])  # remembered, gone: NoStreamResponse, again
    await transport.publish([record("orders", "third"), record("orders", "fourth")])
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    got = await drain(subscription, 3)
    assert [d.record.body for d in got] == [b"second", b"third", b"fourth"]


async def test_a_new_group_starts_from_the_earliest_record(make_transport: Factory) -> None:
    transport = await make_transport()
    await transport.publish([record("orders", "before")])
    subscription = await transport.subscribe("orders", "late-group", prefetch=5)
    got = await drain(subscription, 1)
    assert [d.record.body for d in got] == [b"before"]


async def test_a_record_published_twice_with_the_same_id_is_stored_once(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    same = record("orders", "once")
    await transport.publish([same])
    await transport.publish([same])
    got = await drain(subscription, 1)
    assert [d.record.body for d in got] == [b"once"]
    assert await subscription.fetch(5, 0.3) == []


async def test_two_consumers_in_one_group_share_the_records(make_transport: Factory) -> None:
    a, b = await make_transport(), await make_transport()
    sub_a = await a.subscribe("orders", "workers", prefetch=5)
    sub_b = await b.subscribe("orders", "workers", prefetch=5)
    await a.publish([record("orders", f"m{i}") for i in range(40)])

    async def consume(sub: Any) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await sub.fetch(3, 0.5)
            if not batch and got:
                break
            for delivery in batch:
                got.append(delivery.record.body)
                await delivery.ack()
            await asyncio.sleep(0.01)  # let the other member pull too
        return got

    got_a, got_b = await asyncio.gather(consume(sub_a), consume(sub_b))
    assert sorted(got_a + got_b) == sorted(f"m{i}".encode() for i in range(40))
    assert got_a
    assert got_b


async def test_two_groups_each_get_every_record(make_transport: Factory) -> None:
    transport = await make_transport()
    first = await transport.subscribe("orders", "first", prefetch=5)
    second = await transport.subscribe("orders", "second", prefetch=5)
    await transport.publish([record("orders", f"m{i}") for i in range(10)])
    for subscription in (first, second):
        got = await drain(subscription, 10)
        assert [d.record.body for d in got] == [f"m{i}".encode() for i in range(10)]


# --- retries and redelivery -----------------------------------------------------------------------


@pytest.mark.slow
async def test_retry_is_not_delivered_before_its_delay(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    await transport.publish([record("orders", "flaky")])
    (first,) = await drain(subscription, 1, ack=False)

    await first.retry(1.0, {"ms_attempt": "2"})

    assert await subscription.fetch(5, 0.4) == []  # well inside the delay
    (again,) = await drain(subscription, 1)
    assert again.record.body == b"flaky"
    assert again.attempt == 2


@pytest.mark.slow
async def test_delayed_publish_is_held_back_and_counts_as_first_attempt(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    await transport.publish([record("orders", "later")], delay=1.0)

    assert await subscription.fetch(5, 0.4) == []  # well inside the delay
    (delivery,) = await drain(subscription, 1)
    assert delivery.record.body == b"later"
    assert delivery.attempt == 1


async def test_released_record_comes_back_at_once(make_transport: Factory) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    await transport.publish([record("orders", "again")])
    (delivery,) = await drain(subscription, 1, ack=False)
    await delivery.release()
    (back,) = await drain(subscription, 1, within=ACK_WAIT * 0.8)
    assert back.record.body == b"again"


@pytest.mark.slow
async def test_records_of_a_dead_consumer_are_redelivered_after_ack_wait(
    make_transport: Factory, proxy: Proxy
) -> None:
    dead, alive = await make_transport(proxy.url), await make_transport()
    dead_sub = await dead.subscribe("orders", "g", prefetch=5)
    await dead.publish([record("orders", f"m{i}") for i in range(3)])
    held = await drain(dead_sub, 3, ack=False)
    assert len(held) == 3
    await proxy.stop()  # the consumer's connection dies for good, nothing settled

    alive_sub = await alive.subscribe("orders", "g", prefetch=5)
    got = await drain(alive_sub, 3, within=ACK_WAIT + 5)
    assert sorted(d.record.body for d in got) == [b"m0", b"m1", b"m2"]
    assert all(d.attempt == 2 for d in got)


async def test_closing_a_subscription_gives_back_what_it_holds(make_transport: Factory) -> None:
    transport = await make_transport(ack_wait=30.0)
    subscription = await transport.subscribe("orders", "g", prefetch=5)
    await transport.publish([record("orders", "held")])
    await drain(subscription, 1, ack=False)
    await subscription.close()
    await subscription.close()

    again = await transport.subscribe("orders", "g", prefetch=5)
    (delivery,) = await drain(again, 1, within=5)  # far below ack_wait
    assert delivery.record.body == b"held"


# --- dead letters ---------------------------------------------------------------------------------


async def test_dlq_is_declared_with_its_topic_and_browsed_without_consuming(make_transport: Factory) -> None:
    transport = await make_transport()
    await transport.subscribe("orders", "g", prefetch=5)
    assert await transport.browse("orders.dlq", limit=10) == []

    dead = [record("orders.dlq", f"dead{i}", ms_dlq_traceback="Traceback:\n  line 1") for i in range(5)]
    await transport.publish(dead)

    first = await transport.browse("orders.dlq", limit=3)
    everything = await transport.browse("orders.dlq", limit=10)
    assert [r.body for r in first] == [b"dead0", b"dead1", b"dead2"]
    assert [r.body for r in everything] == [r.body for r in dead]
    assert everything[0].headers == dead[0].headers
    assert everything[0].topic == "orders.dlq"

    assert await transport.purge("orders.dlq") == 5
    assert await transport.browse("orders.dlq", limit=10) == []
    assert await transport.purge("orders.dlq") == 0
    assert await transport.purge("never.declared") == 0
    assert await transport.browse("never.declared", limit=10) == []


async def test_one_event_dead_lettered_by_two_groups_is_kept_twice(make_transport: Factory) -> None:
    transport = await make_transport()
    event = record("orders", "poison")
    dead = [
        Record(
            "orders.dlq",
            event.body,
            {**event.headers, "ms_dlq_group": group, "ms_dlq_last_failure": "2026-01-01T00:00:00Z"},
        )
        for group in ("billing", "shipping")
    ]
    await transport.publish(dead[:1])
    await transport.publish(dead[1:])
    await transport.publish(dead[1:])  # the same dead letter sent again is still de-duplicated
    kept = await transport.browse("orders.dlq", limit=10)
    assert [r.headers["ms_dlq_group"] for r in kept] == ["billing", "shipping"]


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_consuming_resumes_after_the_connection_drops_and_nothing_is_lost(
    make_transport: Factory, proxy: Proxy
) -> None:
    transport = await make_transport(proxy.url, reconnect_wait=0.1)
    subscription = await transport.subscribe("orders", "g", prefetch=10)
    await transport.publish([record("orders", f"m{i}") for i in range(10)])
    unacked = await drain(subscription, 4, ack=False)  # held when the connection dies
    assert len(unacked) == 4

    proxy.cut()
    await transport.publish([record("orders", f"n{i}") for i in range(10)])

    expected = {f"m{i}".encode() for i in range(10)} | {f"n{i}".encode() for i in range(10)}
    seen = {d.record.body for d in unacked}
    deadline = time.monotonic() + ACK_WAIT + 10
    while seen != expected and time.monotonic() < deadline:
        for delivery in await subscription.fetch(10, 0.5):
            seen.add(delivery.record.body)
            await delivery.ack()
    assert seen == expected


async def test_publish_during_an_outage_raises_after_publish_timeout(
    make_transport: Factory, proxy: Proxy
) -> None:
    transport = await make_transport(proxy.url, reconnect_wait=0.1, publish_timeout=0.5)
    await transport.publish([record("orders", "before")])
    await proxy.stop()

    with pytest.raises(ServiceUnavailableError, match="not confirmed within publish_timeout"):
        await transport.publish([record("orders", "lost?")])
    with pytest.raises(ServiceUnavailableError, match="declaring the stream"):
        await transport.publish([record("never.declared", "lost?")])


@pytest.mark.slow
async def test_publish_during_a_short_outage_waits_and_stores_each_record_once(
    make_transport: Factory, proxy: Proxy, nats_url: ServiceURL
) -> None:
    transport = await make_transport(proxy.url, reconnect_wait=0.1, publish_timeout=10.0)
    await transport.publish([record("orders", "before")])
    await proxy.stop()
    publishing = asyncio.create_task(transport.publish([record("orders", f"m{i}") for i in range(5)]))
    await asyncio.sleep(0.3)
    assert not publishing.done()
    await proxy.start()
    await publishing

    direct = await make_transport()
    subscription = await direct.subscribe("orders", "check", prefetch=10)
    got = await drain(subscription, 7, within=2)
    assert [d.record.body for d in got] == [b"before"] + [f"m{i}".encode() for i in range(5)]
