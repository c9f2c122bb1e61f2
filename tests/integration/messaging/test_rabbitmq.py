"""The RabbitMQ transport against a real RabbitMQ: topology, confirms, retries, dead letters and faults.

Every test gets its own vhost from ``rabbitmq_url`` (or, without the management API, a name prefix on
the default vhost, whose queues the ``make_transport`` fixture deletes afterwards). Connection faults
are real: a TCP proxy the test cuts and refuses (an outage), and a server-side close of the client's
connections through the management API or ``rabbitmqctl``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest
from yarl import URL

from mainspring.errors import BadRequestError, ConfigError, ServiceUnavailableError
from mainspring.messaging import create_transport
from mainspring.messaging._rabbitmq_connection import BackoffRobustConnection
from mainspring.messaging._transport import ATTEMPT, Record
from mainspring.messaging.rabbitmq import RabbitMQTransport
from mainspring.testing import ServiceURL
from mainspring.testing._services import require_services

MakeTransport = Callable[..., Awaitable[RabbitMQTransport]]
MANAGEMENT = "http://127.0.0.1:15672/api"


@pytest.fixture
async def make_transport(rabbitmq_url: ServiceURL) -> AsyncIterator[MakeTransport]:
    """Start transports on the test's vhost (or prefix); stop them and remove what they declared."""
    made: list[RabbitMQTransport] = []
    declared: set[str] = set()

    async def make(url: str | None = None, **options: Any) -> RabbitMQTransport:
        if rabbitmq_url.isolation == "prefix":
            options.setdefault("prefix", rabbitmq_url.namespace)
        options.setdefault("connection_name", f"test-{rabbitmq_url.namespace}")
        options.setdefault("reconnect_interval", 0.1)
        transport = RabbitMQTransport(url or str(rabbitmq_url), **options)
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:
        declared.update(transport._declared)
        await transport.stop()
    if rabbitmq_url.isolation == "prefix":  # the vhost is shared and outlives the test: clean up
        connection = await aio_pika.connect(str(rabbitmq_url))
        async with connection:
            for name in declared:
                channel = await connection.channel()
                await channel.queue_delete(name)
                await channel.close()
            channel = await connection.channel()
            for transport in made:
                await channel.exchange_delete(transport.exchange)


def _record(topic: str, n: int, **headers: str) -> Record:
    return Record(topic, f"m{n}".encode(), {"n": str(n), **headers})


async def _drain(sub: Any, want: int, *, within: float = 20.0, ack: bool = True) -> list[Any]:
    """Fetch until ``want`` deliveries arrived (acking them) or ``within`` seconds passed."""
    got: list[Any] = []
    deadline = time.monotonic() + within
    while len(got) < want and time.monotonic() < deadline:
        batch = await sub.fetch(want - len(got), 0.5)
        for delivery in batch:
            if ack:
                await delivery.ack()
        got.extend(batch)
    return got


# --- basics ----------------------------------------------------------------------------------------


async def test_published_records_are_fetched_in_order_with_headers_and_key(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    sub = await transport.subscribe("orders", "billing", prefetch=10)
    await transport.publish([Record("orders", f"m{n}".encode(), {"n": str(n)}, key="k") for n in range(5)])
    got = await _drain(sub, 5)
    assert [d.record.body for d in got] == [f"m{n}".encode() for n in range(5)]
    assert got[0].record.topic == "orders"
    assert got[0].record.key == "k"
    assert got[0].record.headers["n"] == "0"
    assert got[0].attempt == 1
    assert await sub.fetch(10, 0.2) == []  # acked: nothing comes back


async def test_publish_to_a_topic_without_any_group_raises_instead_of_dropping(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    with pytest.raises(ServiceUnavailableError, match="no queue is bound") as info:
        await transport.publish([_record("nobody-listens", 1)])
    assert info.value.code == "messaging_unroutable"
    assert info.value.details["topics"] == ["nobody-listens"]


async def test_members_of_one_group_share_the_records(make_transport: MakeTransport) -> None:
    first, second = await make_transport(), await make_transport()
    subs = [
        await first.subscribe("jobs", "workers", prefetch=2),
        await second.subscribe("jobs", "workers", prefetch=2),
    ]
    await first.publish([_record("jobs", n) for n in range(20)])
    results: list[list[bytes]] = [[], []]

    async def take(index: int) -> None:
        deadline = time.monotonic() + 20
        while sum(map(len, results)) < 20 and time.monotonic() < deadline:
            for delivery in await subs[index].fetch(20, 0.2):
                results[index].append(delivery.record.body)
                await delivery.ack()

    await asyncio.gather(take(0), take(1))
    assert sorted(results[0] + results[1]) == sorted(f"m{n}".encode() for n in range(20))  # each once
    assert all(results), "RabbitMQ round-robins between the members of a group"


async def test_each_group_gets_every_record(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    a = await transport.subscribe("events", "a", prefetch=10)
    b = await transport.subscribe("events", "b", prefetch=10)
    await transport.publish([_record("events", n) for n in range(10)])
    for sub in (a, b):
        got = await _drain(sub, 10)
        assert sorted(d.record.body for d in got) == sorted(f"m{n}".encode() for n in range(10))


async def test_released_record_comes_back(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    sub = await transport.subscribe("jobs", "g", prefetch=1)
    await transport.publish([_record("jobs", 1)])
    (first,) = await _drain(sub, 1, ack=False)
    await first.release()
    (again,) = await _drain(sub, 1)
    assert again.record.body == b"m1"
    assert again.attempt == 1


# --- delays ----------------------------------------------------------------------------------------


async def test_retry_comes_back_to_the_same_group_only_after_its_delay(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    sub = await transport.subscribe("payments", "charger", prefetch=5)
    other = await transport.subscribe("payments", "auditor", prefetch=5)
    await transport.publish([_record("payments", 1)])
    (delivery,) = await _drain(sub, 1, ack=False)
    assert len(await _drain(other, 1)) == 1
    retried_at = time.monotonic()
    await delivery.retry(0.5, {ATTEMPT: "2", "x-note": "retried"})
    (again,) = await _drain(sub, 1)
    # Not before the delay (a lower bound only: a loaded machine makes it later, never earlier).
    assert time.monotonic() - retried_at >= 0.45
    assert again.record.body == b"m1"
    assert again.attempt == 2
    assert again.record.headers["x-note"] == "retried"
    assert await other.fetch(5, 0.3) == []  # the retry is for the failing group only


async def test_delayed_publish_reaches_every_group_after_the_delay(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    subs = [await transport.subscribe("reminders", g, prefetch=5) for g in ("a", "b")]
    published_at = time.monotonic()
    await transport.publish([_record("reminders", 1), _record("reminders", 2)], delay=0.5)
    for sub in subs:
        got = await _drain(sub, 2)
        assert time.monotonic() - published_at >= 0.45  # not delivered before the delay
        assert [d.record.body for d in got] == [b"m1", b"m2"]


async def test_delays_are_rounded_up_to_tiers() -> None:
    transport = RabbitMQTransport("amqp://guest:guest@127.0.0.1/", delay_tiers=(1, 0.5, 5))
    assert transport._delay_ms(0.2) == 500
    assert transport._delay_ms(0.5) == 500
    assert transport._delay_ms(0.51) == 1000
    assert transport._delay_ms(4.2) == 5000
    assert transport._delay_ms(61.2) == 62000  # past the last tier: whole seconds, rounded up


# --- dead letters ----------------------------------------------------------------------------------


async def test_dead_letters_are_kept_without_consumers_browsed_and_purged(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    # No subscriber at all: publishing to a .dlq topic declares its storage queue first.
    await transport.publish([_record("audit.dlq", n, ms_dlq_reason="exhausted") for n in range(3)])
    first_two = await transport.browse("audit.dlq", limit=2)
    assert [r.body for r in first_two] == [b"m0", b"m1"]
    assert first_two[0].topic == "audit.dlq"
    assert first_two[0].headers["ms_dlq_reason"] == "exhausted"
    assert [r.body for r in await transport.browse("audit.dlq", limit=10)] == [b"m0", b"m1", b"m2"]
    assert await transport.purge("audit.dlq") == 3
    assert await transport.browse("audit.dlq", limit=10) == []


async def test_subscribing_declares_the_dead_letter_queue(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    await transport.subscribe("mail", "sender", prefetch=1)
    assert await transport.browse("mail.dlq", limit=5) == []
    assert await transport.purge("mail.dlq") == 0


async def test_browse_of_a_topic_without_storage_is_refused(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    with pytest.raises(ConfigError, match="dead-letter topics"):
        await transport.browse("orders", limit=5)


# --- queue types and options -----------------------------------------------------------------------


async def test_quorum_queues_publish_fetch_and_retry(make_transport: MakeTransport) -> None:
    transport = await make_transport(queue_type="quorum")
    sub = await transport.subscribe("orders", "q", prefetch=5)
    await transport.publish([_record("orders", n) for n in range(3)])
    got = await _drain(sub, 3, ack=False)
    assert [d.record.body for d in got] == [b"m0", b"m1", b"m2"]
    await got[0].retry(0.2, {ATTEMPT: "2"})
    for delivery in got[1:]:
        await delivery.ack()
    (again,) = await _drain(sub, 1)
    assert again.attempt == 2
    await transport.publish([_record("orders.dlq", 9)])
    assert [r.body for r in await transport.browse("orders.dlq", limit=5)] == [b"m9"]


async def test_queue_declared_with_another_type_is_a_config_error(make_transport: MakeTransport) -> None:
    classic = await make_transport()
    await classic.subscribe("orders", "g", prefetch=1)
    quorum = await make_transport(queue_type="quorum")
    with pytest.raises(ConfigError, match="other arguments"):
        await quorum.subscribe("orders", "g", prefetch=1)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"queue_type": "stream"}, "queue_type"),
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"publish_timeout": True}, "publish_timeout"),
        ({"connect_timeout": float("inf")}, "connect_timeout"),
        ({"reconnect_interval": -1}, "reconnect_interval"),
        ({"max_reconnect_interval": "30"}, "max_reconnect_interval"),
        ({"delay_tiers": ()}, "delay_tiers"),
        ({"delay_tiers": (1, -2)}, "delay_tiers"),
        ({"exchange": ""}, "exchange"),
        ({"exchange": "amq.topic"}, "exchange"),
        ({"prefix": "a#b"}, "prefix"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RabbitMQTransport("amqp://guest:guest@127.0.0.1/", **options)
    assert [p.path for p in info.value.problems] == [field]


def test_unknown_option_is_a_config_error_through_the_factory() -> None:
    transport = create_transport("amqp://guest:guest@127.0.0.1/", queue_type="quorum")
    assert isinstance(transport, RabbitMQTransport)
    with pytest.raises(ConfigError, match="claim_idle"):
        create_transport("amqp://guest:guest@127.0.0.1/", claim_idle=1.0)


@pytest.mark.parametrize("url", ["redis://127.0.0.1/0", "amqp:///", "not a url"])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="url"):
        RabbitMQTransport(url)


async def test_bad_names_are_config_errors(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    with pytest.raises(ConfigError, match="wildcards"):
        await transport.subscribe("orders.#", "g", prefetch=1)
    with pytest.raises(ConfigError, match="dlq"):
        await transport.subscribe("orders", "dlq", prefetch=1)
    with pytest.raises(ConfigError, match="prefetch"):
        await transport.subscribe("orders", "g", prefetch=0)
    with pytest.raises(ConfigError, match="too long"):
        await transport.publish([Record("x" * 250, b"")])


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), "1"])
async def test_bad_delay_is_a_bad_request(make_transport: MakeTransport, delay: Any) -> None:
    transport = await make_transport()
    await transport.subscribe("orders", "g", prefetch=1)
    with pytest.raises(BadRequestError, match="delay"):
        await transport.publish([_record("orders", 1)], delay=delay)


async def test_reconnection_pauses_grow_with_the_outage_up_to_the_cap() -> None:
    connection = BackoffRobustConnection(
        URL("amqp://guest:guest@127.0.0.1/?reconnect_interval=0.5&max_reconnect_interval=4")
    )
    assert connection.reconnect_interval == 0.5  # connected: the configured pause
    connection._down_since = time.monotonic() - 2
    assert 1.0 <= connection.reconnect_interval <= 2.1  # about the outage so far, jittered
    connection._down_since = time.monotonic() - 600
    assert 2.0 <= connection.reconnect_interval <= 4.0  # capped
    connection._mark_up(connection)
    assert connection.reconnect_interval == 0.5


async def test_unreachable_broker_fails_start_with_service_unavailable() -> None:
    transport = RabbitMQTransport("amqp://guest:guest@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(ServiceUnavailableError, match="cannot connect"):
        await transport.start()
    await transport.stop()


# --- faults ----------------------------------------------------------------------------------------


class _Proxy:
    """A TCP proxy in front of RabbitMQ that a test can cut (drop every connection) and refuse."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.listen_port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(rabbitmq_url: ServiceURL) -> AsyncIterator[_Proxy]:
    parts = urlsplit(str(rabbitmq_url))
    running = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await running.start()
    yield running
    await running.stop()


def _through(url: str, proxy: _Proxy) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{proxy.listen_port}"))


async def test_publish_during_an_outage_waits_for_the_reconnection(
    make_transport: MakeTransport, proxy: _Proxy, rabbitmq_url: ServiceURL
) -> None:
    transport = await make_transport(_through(rabbitmq_url, proxy), publish_timeout=20)
    sub = await transport.subscribe("orders", "g", prefetch=5)
    proxy.refusing = True
    proxy.cut()
    publishing = asyncio.create_task(transport.publish([_record("orders", 1)]))
    # A first dead letter of a topic declares its queue first: that waits for the broker too.
    dead_lettering = asyncio.create_task(transport.publish([_record("invoices.dlq", 2)]))
    await asyncio.sleep(0.5)
    assert not publishing.done(), "the publish must wait for the broker, not fail or drop the record"
    assert not dead_lettering.done()
    proxy.refusing = False
    await publishing
    await dead_lettering
    assert [r.body for r in await transport.browse("invoices.dlq", limit=5)] == [b"m2"]
    (delivery,) = await _drain(sub, 1)  # the consumer came back by itself
    assert delivery.record.body == b"m1"


async def test_publish_during_a_long_outage_raises_service_unavailable(
    make_transport: MakeTransport, proxy: _Proxy, rabbitmq_url: ServiceURL
) -> None:
    transport = await make_transport(_through(rabbitmq_url, proxy), publish_timeout=0.5)
    await transport.subscribe("orders", "g", prefetch=5)
    proxy.refusing = True
    proxy.cut()
    with pytest.raises(ServiceUnavailableError, match="did not confirm"):
        await transport.publish([_record("orders", 1)])


async def test_unacked_records_of_a_dead_consumer_are_redelivered(
    make_transport: MakeTransport, proxy: _Proxy, rabbitmq_url: ServiceURL
) -> None:
    dying = await make_transport(_through(rabbitmq_url, proxy))
    sub = await dying.subscribe("tasks", "g", prefetch=10)
    await dying.publish([_record("tasks", n) for n in range(3)])
    assert len(await _drain(sub, 3, ack=False)) == 3
    proxy.refusing = True
    proxy.cut()  # the process "dies": its connection goes away with three unacked deliveries
    survivor = await make_transport()
    got = await _drain(await survivor.subscribe("tasks", "g", prefetch=10), 3)
    assert sorted(d.record.body for d in got) == [b"m0", b"m1", b"m2"]


def _close_connections_via_management(vhost: str, name_prefix: str) -> int | None:
    """Close the connections named ``name_prefix...`` of ``vhost``; ``None`` if the API is not there."""
    token = base64.b64encode(b"guest:guest").decode()
    headers = {"Authorization": f"Basic {token}"}
    request = urllib.request.Request(
        f"{MANAGEMENT}/vhosts/{quote(vhost, safe='')}/connections", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            connections = json.load(response)
    except (urllib.error.URLError, OSError):
        return None
    names = [
        c["name"]
        for c in connections
        if str(c.get("client_properties", {}).get("connection_name", "")).startswith(name_prefix)
    ]
    for name in names:
        delete = urllib.request.Request(
            f"{MANAGEMENT}/connections/{quote(name, safe='')}", method="DELETE", headers=headers
        )
        with urllib.request.urlopen(delete, timeout=3) as response:
            response.read()
    return len(names)


# One rabbitmqctl call (each starts an Erlang VM, seconds): close the connections whose client-given
# name starts with the prefix, and print how many.
_CLOSE_BY_NAME = """Prefix = <<"{prefix}">>,
Ps = [P || P <- rabbit_networking:connections(),
  case lists:keyfind(<<"connection_name">>, 1, proplists:get_value(client_properties,
         rabbit_networking:connection_info(P, [client_properties]), [])) of
    {{_, _, N}} -> binary:longest_common_prefix([N, Prefix]) =:= byte_size(Prefix);
    false -> false
  end],
[rabbit_networking:close_connection(P, "test: server-side close") || P <- Ps],
length(Ps)."""


async def _close_connections_on_the_server(rabbitmq_url: ServiceURL, name_prefix: str) -> int:
    vhost = rabbitmq_url.namespace if rabbitmq_url.isolation == "vhost" else "/"
    for _ in range(50):  # the management API lists a new connection after a short while
        closed = await asyncio.to_thread(_close_connections_via_management, vhost, name_prefix)
        if closed != 0:
            break
        await asyncio.sleep(0.2)
    if closed is not None:
        return closed
    if shutil.which("rabbitmqctl") is None:
        message = "neither the RabbitMQ management API nor rabbitmqctl is available to close connections"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "eval",
        _CLOSE_BY_NAME.format(prefix=name_prefix),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return int(out.decode().strip())


@pytest.mark.slow  # rabbitmqctl starts an Erlang VM: seconds
async def test_connections_closed_by_the_server_mid_stream_lose_nothing(
    make_transport: MakeTransport, rabbitmq_url: ServiceURL
) -> None:
    name = f"test-{rabbitmq_url.namespace}-fault"
    transport = await make_transport(connection_name=name, publish_timeout=30)
    sub = await transport.subscribe("stream", "g", prefetch=20)
    sent: set[bytes] = set()
    seen: set[bytes] = set()
    closed = asyncio.Event()

    async def produce() -> None:
        # Publish continuously until well after the connections were closed.
        n, after = 0, 0
        while after < 100:
            batch = [_record("stream", i) for i in range(n, n + 10)]
            await transport.publish(batch)
            sent.update(r.body for r in batch)
            n += 10
            after += 10 if closed.is_set() else 0
            await asyncio.sleep(0.05)

    async def consume() -> None:
        deadline = time.monotonic() + 60
        while (not producer.done() or not sent <= seen) and time.monotonic() < deadline:
            for delivery in await sub.fetch(20, 0.5):
                seen.add(delivery.record.body)
                await delivery.ack()

    producer = asyncio.create_task(produce())
    consumer = asyncio.create_task(consume())
    while len(seen) < 30:  # noqa: ASYNC110 - polling a plain set the consumer task fills
        await asyncio.sleep(0.01)
    assert await _close_connections_on_the_server(rabbitmq_url, name) == 2  # publishing + consuming
    closed.set()
    await asyncio.gather(producer, consumer)
    assert sent == seen  # nothing lost (duplicates are allowed: at least once)
