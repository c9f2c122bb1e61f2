"""RedisTransport against a real Redis: streams and groups, delays, takeover, killed connections,
outages (through a cuttable TCP proxy), dead letters and option errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from mainspring.errors import BadRequestError, ConfigError, ConflictError, ServiceUnavailableError
from mainspring.messaging import Broker
from mainspring.messaging._factory import create_transport
from mainspring.messaging._transport import ATTEMPT, Delivery, Record
from mainspring.messaging.redis import RedisSubscription, RedisTransport
from mainspring.testing import ServiceURL

MakeTransport = Callable[..., Awaitable[RedisTransport]]


@pytest.fixture
async def admin(redis_url: ServiceURL) -> AsyncIterator[Any]:
    """A plain client on the test's database, to look at (and break) what the transport does."""
    client = aioredis.Redis.from_url(str(redis_url))
    yield client
    await client.aclose()


@pytest.fixture
async def make_transport(redis_url: ServiceURL) -> AsyncIterator[MakeTransport]:
    """Build started transports on the test's database; all stopped after the test."""
    made: list[RedisTransport] = []

    async def make(url: str | None = None, **options: Any) -> RedisTransport:
        transport = RedisTransport(url or str(redis_url), **options)
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:
        await transport.stop()


async def fetch_until(
    subscription: RedisSubscription, count: int, *, within: float = 10.0, ack: bool = True
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived (acking them unless ``ack=False``) or fail."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} deliveries within {within} s"
        batch = await subscription.fetch(count - len(got), 0.2)
        for delivery in batch:
            if ack:
                await delivery.ack()
        got += batch
    return got


def records(topic: str, count: int, **headers: str) -> list[Record]:
    return [Record(topic, b"%d" % n, {"n": str(n), **headers}) for n in range(count)]


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int(d.record.body) for d in deliveries]


async def pending(admin: Any, key: str, group: str) -> int:
    return int((await admin.xpending(key, group))["pending"])


# --- basics ---------------------------------------------------------------------------------------


async def test_published_records_are_fetched_in_order_with_headers_and_key(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "billing", prefetch=10)
    first_sent = Record("orders", b"\x00body\xff", {"ce_id": "1", "x-tenant": "acme"}, key="k1")
    await transport.publish([first_sent, *records("orders", 3)])
    got = await fetch_until(subscription, 4, ack=False)
    assert got[0].record == first_sent
    assert got[0].attempt == 1
    assert numbers(got[1:]) == [0, 1, 2]
    assert await pending(admin, "ms:{orders}", "billing") == 4
    for delivery in got:
        await delivery.ack()
    assert await pending(admin, "ms:{orders}", "billing") == 0
    assert await subscription.fetch(10, 0.1) == []


async def test_a_new_group_starts_from_the_oldest_record(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    await transport.publish(records("events", 3))
    late = await transport.subscribe("events", "late", prefetch=10)
    assert numbers(await fetch_until(late, 3)) == [0, 1, 2]


async def test_two_consumers_of_one_group_share_the_work(make_transport: MakeTransport) -> None:
    publisher = await make_transport()
    subscriptions = [
        await (await make_transport()).subscribe("jobs", "workers", prefetch=1) for _ in range(2)
    ]
    got: list[list[int]] = [[], []]
    total = 40

    async def work(index: int) -> None:
        while sum(map(len, got)) < total:
            for delivery in await subscriptions[index].fetch(1, 0.1):
                await asyncio.sleep(0.01)  # a handler that takes a moment
                got[index].append(int(delivery.record.body))
                await delivery.ack()

    await publisher.publish(records("jobs", total))
    await asyncio.wait_for(asyncio.gather(work(0), work(1)), 20)
    assert sorted(got[0] + got[1]) == list(range(total))  # each record once
    assert got[0], "both consumers must have taken part"
    assert got[1], "both consumers must have taken part"


async def test_each_group_gets_every_record(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    a = await transport.subscribe("events", "a", prefetch=10)
    b = await transport.subscribe("events", "b", prefetch=10)
    await transport.publish(records("events", 5))
    assert numbers(await fetch_until(a, 5)) == list(range(5))
    assert numbers(await fetch_until(b, 5)) == list(range(5))


async def test_maxlen_trims_topics_approximately_but_never_dead_letters(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport(maxlen=10)
    for _ in range(5):
        await transport.publish(records("busy", 200) + records("busy.dlq", 200))
    assert await admin.xlen("ms:{busy}") < 1000
    assert await admin.xlen("ms:{busy.dlq}") == 1000


async def test_a_subscription_survives_its_stream_being_deleted(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=10)
    await admin.flushdb()  # streams and groups gone
    await transport.publish(records("orders", 1))
    assert numbers(await fetch_until(subscription, 1)) == [0]


# --- delays, retries, release ---------------------------------------------------------------------


async def test_entries_with_one_field_per_header_from_earlier_versions_are_still_read(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=10)
    await admin.xadd("ms:{orders}", {"body": b"7", "key": "k", "h:ce_id": "old-1", "h:n": "7"})
    expected = Record("orders", b"7", {"ce_id": "old-1", "n": "7"}, key="k")
    assert (await transport.browse("orders", limit=10))[0] == expected
    (got,) = await fetch_until(subscription, 1)
    assert got.record == expected


async def test_headers_travel_in_one_field(make_transport: MakeTransport, admin: Any) -> None:
    transport = await make_transport()
    await transport.publish([Record("orders", b"1", {"ce_id": "a", "x-tenant": "acme"}, key="k")])
    ((_, fields),) = await admin.xrange("ms:{orders}")
    assert sorted(fields) == [b"body", b"headers", b"key"]


async def test_delayed_publish_waits_in_a_sorted_set_and_keeps_the_batch_order(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("reminders", "g", prefetch=10)
    sent_at = time.monotonic()
    await transport.publish(records("reminders", 5), delay=0.6)
    assert await admin.zcard("ms:{reminders}:delayed") == 5
    assert await admin.xlen("ms:{reminders}") == 0
    got = await fetch_until(subscription, 5)
    assert time.monotonic() - sent_at >= 0.6
    assert numbers(got) == list(range(5))
    assert await admin.zcard("ms:{reminders}:delayed") == 0


async def test_retry_comes_back_to_the_same_group_only_after_its_delay(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    failing = await transport.subscribe("payments", "failing", prefetch=10)
    other = await transport.subscribe("payments", "other", prefetch=10)
    await transport.publish(records("payments", 1))
    (delivery,) = await fetch_until(failing, 1, ack=False)
    retried_at = time.monotonic()
    await delivery.retry(0.5, {**delivery.record.headers, ATTEMPT: "2"})
    assert await pending(admin, "ms:{payments}", "failing") == 0  # the original is settled
    assert await failing.fetch(10, 0.2) == []  # not before its delay
    (again,) = await fetch_until(failing, 1)
    assert time.monotonic() - retried_at >= 0.5
    assert again.attempt == 2
    assert again.record.body == b"0"
    # The other group saw the record once, and no retry of it.
    assert numbers(await fetch_until(other, 1)) == [0]
    assert await other.fetch(10, 0.3) == []
    assert await admin.xlen("ms:{payments}:retry:failing") == 0  # acked retries are deleted


async def test_released_record_goes_at_once_to_another_consumer_without_a_new_attempt(
    make_transport: MakeTransport,
) -> None:
    first = await (await make_transport()).subscribe("tasks", "g", prefetch=10)
    second = await (await make_transport(claim_idle=30)).subscribe("tasks", "g", prefetch=10)
    await (await make_transport()).publish(records("tasks", 1, **{ATTEMPT: "3"}))
    (delivery,) = await fetch_until(first, 1, ack=False)
    await delivery.release()
    (again,) = await fetch_until(second, 1, within=5)  # long before claim_idle
    assert again.record == delivery.record
    assert again.attempt == 3


async def test_settling_twice_changes_nothing(make_transport: MakeTransport, admin: Any) -> None:
    transport = await make_transport()
    subscription = await transport.subscribe("orders", "g", prefetch=10)
    await transport.publish(records("orders", 1))
    (delivery,) = await fetch_until(subscription, 1)
    await delivery.release()
    assert await admin.xlen("ms:{orders}:retry:g") == 0
    assert await subscription.fetch(10, 0.1) == []


# --- consumers that die, connections that drop ------------------------------------------------------


async def test_entries_of_a_dead_consumer_are_taken_over_after_claim_idle(
    make_transport: MakeTransport, admin: Any
) -> None:
    dead = await (await make_transport(claim_idle=0.5)).subscribe("work", "g", prefetch=10)
    survivor_transport = await make_transport(claim_idle=0.5)
    survivor = await survivor_transport.subscribe("work", "g", prefetch=10)
    await survivor_transport.publish(records("work", 3))
    taken = await fetch_until(dead, 3, ack=False)  # and never acked: the consumer "dies"
    assert await survivor.fetch(10, 0.1) == []  # not idle long enough yet
    claimed = await fetch_until(survivor, 3, within=10)
    assert sorted(numbers(claimed)) == sorted(numbers(taken))
    assert await pending(admin, "ms:{work}", "g") == 0


async def test_a_restarted_consumer_re_reads_its_own_pending_entries(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport(consumer_name="worker-1", claim_idle=60)
    await transport.publish(records("work", 2))
    await admin.xgroup_create("ms:{work}", "g", id="0")
    # A read whose reply never arrived: the entries are pending for worker-1, unseen by anyone.
    await admin.xreadgroup("g", "worker-1", {"ms:{work}": ">"}, count=10)
    subscription = await transport.subscribe("work", "g", prefetch=10)
    assert numbers(await fetch_until(subscription, 2, within=3)) == [0, 1]
    assert await pending(admin, "ms:{work}", "g") == 0


async def kill_connections(admin: Any, db: str) -> int:
    """Kill the transports' connections on database ``db`` (and only those: other tests share Redis)."""
    killed = 0
    for client in await admin.client_list():
        if client.get("name") == "mainspring-messaging" and client.get("db") == db:
            with suppress(aioredis.ResponseError):  # already gone
                killed += await admin.client_kill_filter(_id=client["id"])
    return killed


async def test_killed_connections_mid_stream_lose_nothing(
    make_transport: MakeTransport, admin: Any, redis_url: ServiceURL
) -> None:
    publisher = await make_transport(publish_timeout=10)
    consumers = [
        await (await make_transport(claim_idle=30)).subscribe("stream", "g", prefetch=20) for _ in range(2)
    ]
    total, seen = 300, []
    published = asyncio.Event()

    async def publish() -> None:
        for start in range(0, total, 30):
            await publisher.publish([Record("stream", b"%d" % n) for n in range(start, start + 30)])
            await asyncio.sleep(0.02)
        published.set()

    async def consume(subscription: RedisSubscription) -> None:
        while len(set(seen)) < total:
            for delivery in await subscription.fetch(20, 0.2):
                await asyncio.sleep(0)
                with suppress(ServiceUnavailableError):  # the ack is lost: the entry comes back
                    await delivery.ack()
                    seen.append(int(delivery.record.body))

    async def kill() -> int:
        kills = 0
        while not published.is_set() or len(set(seen)) < total // 2:
            await asyncio.sleep(0.05)
            kills += await kill_connections(admin, redis_url.namespace)
        return kills

    tasks = [asyncio.create_task(consume(s)) for s in consumers]
    _, kills = await asyncio.wait_for(asyncio.gather(publish(), kill()), 30)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert kills > 0
    assert set(seen) == set(range(total))
    assert await pending(admin, "ms:{stream}", "g") == 0


class CuttableProxy:
    """A TCP proxy in front of Redis that can go away (an outage) and come back."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.up = True
        #: While set, replies from Redis are dropped on the way to the client (a reply lost in transit).
        self.swallow = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self.up = False
        for writer in self._writers:
            writer.close()

    def restore(self) -> None:
        self.up = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, replies=True))
        finally:
            self._writers -= {writer, up_writer}
            self._tasks.discard(task)
            writer.close()
            up_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool = False
    ) -> None:
        with suppress(OSError):
            while data := await reader.read(65536):
                if replies and self.swallow:
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def proxy(redis_url: ServiceURL) -> AsyncIterator[tuple[CuttableProxy, str]]:
    parts = urlsplit(str(redis_url))
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    yield proxy, f"redis://127.0.0.1:{proxy.port}{parts.path}"
    await proxy.stop()


async def test_publish_waits_through_a_short_outage(
    proxy: tuple[CuttableProxy, str], make_transport: MakeTransport, admin: Any
) -> None:
    cuttable, url = proxy
    transport = await make_transport(url, publish_timeout=10)
    cuttable.cut()
    publishing = asyncio.create_task(transport.publish(records("orders", 3)))
    await asyncio.sleep(0.3)
    assert not publishing.done()
    cuttable.restore()
    await asyncio.wait_for(publishing, 10)
    assert await admin.xlen("ms:{orders}") == 3


async def test_publish_during_a_long_outage_raises_service_unavailable(
    proxy: tuple[CuttableProxy, str], make_transport: MakeTransport
) -> None:
    cuttable, url = proxy
    transport = await make_transport(url, publish_timeout=0.3)
    cuttable.cut()
    with pytest.raises(ServiceUnavailableError, match="publish failed"):
        await transport.publish(records("orders", 1))


async def test_consumer_keeps_consuming_across_an_outage(
    proxy: tuple[CuttableProxy, str], make_transport: MakeTransport
) -> None:
    cuttable, url = proxy
    consumer = await make_transport(url, claim_idle=30)
    subscription = await consumer.subscribe("orders", "g", prefetch=10)
    publisher = await make_transport()
    await publisher.publish(records("orders", 2))
    assert numbers(await fetch_until(subscription, 2)) == [0, 1]
    cuttable.cut()
    assert await subscription.fetch(10, 0.3) == []  # no error: it keeps trying
    await publisher.publish(records("orders", 2))
    cuttable.restore()
    assert numbers(await fetch_until(subscription, 2)) == [0, 1]


async def test_acks_sent_together_fail_together_in_an_outage_and_the_entries_come_back(
    proxy: tuple[CuttableProxy, str], make_transport: MakeTransport, admin: Any
) -> None:
    cuttable, url = proxy
    # claim_idle is long: the entries must come back through the consumer's own re-read.
    consumer = await make_transport(url, claim_idle=60, publish_timeout=0.3)
    subscription = await consumer.subscribe("orders", "g", prefetch=50)
    publisher = await make_transport()
    await publisher.publish(records("orders", 30))
    got = await fetch_until(subscription, 30, ack=False)
    await asyncio.gather(*(delivery.ack() for delivery in got[:20]))
    assert await pending(admin, "ms:{orders}", "g") == 10
    cuttable.cut()
    failures: list[BaseException | None] = [*await subscription.ack_many(got[20:25])]  # the broker's call
    failures += await asyncio.gather(*(delivery.ack() for delivery in got[25:]), return_exceptions=True)
    assert len(failures) == 10
    assert all(isinstance(failure, ServiceUnavailableError) for failure in failures), failures
    cuttable.restore()
    again = await fetch_until(subscription, 10)
    assert numbers(again) == list(range(20, 30))
    assert await pending(admin, "ms:{orders}", "g") == 0


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_entries_whose_read_reply_was_lost_are_re_read_after_reconnecting(
    proxy: tuple[CuttableProxy, str], make_transport: MakeTransport, admin: Any, redis_url: ServiceURL
) -> None:
    cuttable, url = proxy
    # claim_idle is long: the entry must come back through the consumer's own re-read, not a takeover.
    consumer = await make_transport(url, claim_idle=60, consumer_name="reader")
    subscription = await consumer.subscribe("orders", "g", prefetch=10)
    fetching = asyncio.create_task(subscription.fetch(10, 10))

    async def blocked() -> bool:
        return any(
            c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") and c.get("db") == redis_url.namespace
            for c in await admin.client_list()
        )

    await wait_for(blocked, "the consumer to block in XREADGROUP")
    cuttable.swallow = True
    await (await make_transport()).publish(records("orders", 1))

    async def delivered() -> bool:
        return await pending(admin, "ms:{orders}", "g") == 1

    await wait_for(delivered, "Redis to deliver the entry into the void")
    cuttable.cut()  # the consumer never saw the reply; its connection drops
    cuttable.swallow = False
    cuttable.restore()
    got = list(await fetching) or await fetch_until(subscription, 1, ack=False)
    assert numbers(got) == [0]
    await got[0].ack()
    assert await pending(admin, "ms:{orders}", "g") == 0


async def test_start_against_an_unreachable_redis_raises_service_unavailable() -> None:
    transport = RedisTransport("redis://127.0.0.1:1/0", publish_timeout=0.2, connect_timeout=0.2)
    with pytest.raises(ServiceUnavailableError, match="connect failed"):
        await transport.start()
    await transport.stop()


async def test_calls_before_start_raise_service_unavailable(redis_url: ServiceURL) -> None:
    transport = RedisTransport(str(redis_url))
    with pytest.raises(ServiceUnavailableError, match="start"):
        await transport.publish(records("orders", 1))


# --- the broker on Redis ---------------------------------------------------------------------------


async def test_a_broker_stopped_while_acks_wait_through_an_outage_still_acks_everything_handled(
    proxy: tuple[CuttableProxy, str], admin: Any
) -> None:
    cuttable, url = proxy
    broker = Broker(create_transport(url), fetch_timeout=0.2)
    handled: list[int] = []
    done = asyncio.Event()
    total = 200

    @broker.subscriber("orders", group="g", concurrency=4)
    async def handle(data: dict[str, int]) -> None:
        handled.append(data["n"])
        if len(handled) == total:
            cuttable.cut()  # the acks of the last messages meet an outage
            done.set()

    await broker.start()
    try:
        await broker.publish_batch("orders", [{"n": n} for n in range(total)])
        await asyncio.wait_for(done.wait(), 10)
        asyncio.get_running_loop().call_later(0.3, cuttable.restore)
    finally:
        await broker.stop()  # waits for those acks before the transport closes
    assert sorted(handled) == list(range(total))
    assert broker.stats.handled == total
    assert await pending(admin, "ms:{orders}", "g") == 0


# --- dead letters -----------------------------------------------------------------------------------


async def test_dead_letters_are_browsed_without_consuming_and_purged_with_a_count(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    group = await transport.subscribe("audit.dlq", "replay", prefetch=10)
    await transport.publish(records("audit.dlq", 3, reason="exhausted"))
    await transport.publish(records("audit.dlq", 1), delay=60)
    browsed = await transport.browse("audit.dlq", limit=2)
    assert [r.body for r in browsed] == [b"0", b"1"]
    assert browsed[0].headers == {"n": "0", "reason": "exhausted"}
    assert len(await transport.browse("audit.dlq", limit=10)) == 3
    assert await transport.purge("audit.dlq") == 4  # three stored, one still delayed
    assert await transport.browse("audit.dlq", limit=10) == []
    assert await transport.purge("audit.dlq") == 0
    # The group survives the purge.
    await transport.publish(records("audit.dlq", 1))
    assert numbers(await fetch_until(group, 1)) == [0]


async def test_entries_purged_while_pending_are_dropped_not_delivered_empty(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport(consumer_name="w", claim_idle=60)
    await transport.publish(records("audit", 2))
    await admin.xgroup_create("ms:{audit}", "g", id="0")
    await admin.xreadgroup("g", "w", {"ms:{audit}": ">"}, count=10)
    await transport.purge("audit")
    subscription = await transport.subscribe("audit", "g", prefetch=10)
    assert await subscription.fetch(10, 0.2) == []
    assert await pending(admin, "ms:{audit}", "g") == 0


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"claim_idle": 0}, "claim_idle"),
        ({"block": -1}, "block"),
        ({"publish_timeout": float("inf")}, "publish_timeout"),
        ({"maxlen": 0}, "maxlen"),
        ({"prefix": "a{b}"}, "prefix"),
        ({"consumer_name": ""}, "consumer_name"),
        ({"max_connections": 1}, "max_connections"),
        ({"claim_idel": 5}, "claim_idel"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=rf"messaging\.{where}"):
        RedisTransport("redis://localhost:6379/0", **options)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/x",
        "redis://localhost:6379/0?color=red",
        "redis+cluster://a:7000",
        "redis://a:7000?cluster=true",
        "http://localhost:6379",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"messaging\.url"):
        RedisTransport(url)


def test_the_factory_builds_the_transport_and_checks_its_options() -> None:
    transport = create_transport("redis://localhost:6379/3", claim_idle=2.5, prefix="app:")
    assert isinstance(transport, RedisTransport)
    assert (transport.claim_idle, transport.prefix, transport.target.db) == (2.5, "app:", 3)
    with pytest.raises(ConfigError, match=r"messaging\.color"):
        create_transport("redis://localhost:6379/3", color="red")


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisTransport("redis://localhost:6379/x", claim_idle=-1, maxlen="10")  # type: ignore[arg-type]
    assert len(caught.value.problems) == 3


async def test_bad_arguments_are_refused(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    with pytest.raises(BadRequestError, match="topic"):
        await transport.publish([Record("", b"x")])
    with pytest.raises(BadRequestError, match="delay"):
        await transport.publish(records("orders", 1), delay=float("nan"))
    with pytest.raises(ConfigError, match="group"):
        await transport.subscribe("orders", "", prefetch=1)
    with pytest.raises(BadRequestError, match="limit"):
        await transport.browse("orders", limit=0)


async def test_a_refused_xadd_in_a_batch_is_reported_and_the_others_land(
    make_transport: MakeTransport, admin: Any
) -> None:
    transport = await make_transport()
    await admin.set("ms:{broken}", "not a stream")  # XADD to it: WRONGTYPE
    batch = [*records("fine", 2), Record("broken", b"x"), *records("fine", 2)]
    with pytest.raises(ConflictError, match="holds another type"):
        await transport.publish(batch)
    assert await admin.xlen("ms:{fine}") == 4  # the other records of the batch, each once
    await transport.publish(records("fine", 1))  # the connection is still in step
    assert await admin.xlen("ms:{fine}") == 5
