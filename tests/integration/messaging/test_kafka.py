"""KafkaTransport against the librdkafka mock cluster: groups and commits, rebalancing between two
members, per-key order, delayed retries and publishes, release, dead letters, outages, option errors."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from mainspring.errors import ConfigError, ServiceUnavailableError
from mainspring.messaging import Broker
from mainspring.messaging._factory import create_transport
from mainspring.messaging._kafka_consumer import KafkaSubscription
from mainspring.messaging._transport import ATTEMPT, NOT_BEFORE, Delivery, Record
from mainspring.messaging.kafka import KafkaTransport
from mainspring.testing import MockKafkaCluster, ServiceURL

MakeTransport = Callable[..., Awaitable[KafkaTransport]]

# The mock lets a rejoining group wait session_timeout - 1 s, so keep that short (real brokers want
# >= 6 s); and it answers an empty fetch only after fetch.wait.max.ms even when records arrive
# meanwhile (a real broker answers at once), so keep that short too.
FAST: dict[str, Any] = {
    "session_timeout": 2.0,
    "publish_timeout": 5.0,
    "consumer_options": {"fetch.wait.max.ms": 10},
}


@pytest.fixture
async def make_transport(kafka_url: ServiceURL) -> AsyncIterator[MakeTransport]:
    """Build started transports on the test's topic prefix; all stopped after the test."""
    made: list[KafkaTransport] = []

    async def make(**options: Any) -> KafkaTransport:
        transport = KafkaTransport(str(kafka_url), **{"prefix": kafka_url.namespace, **FAST, **options})
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:
        await transport.stop()


async def subscribe(transport: KafkaTransport, topic: str, group: str) -> KafkaSubscription:
    subscription = await transport.subscribe(topic, group, prefetch=50)
    assert isinstance(subscription, KafkaSubscription)
    return subscription


async def fetch_until(
    subscription: KafkaSubscription, count: int, *, within: float = 15.0, ack: bool = True
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived (acking them unless ``ack=False``) or fail."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} deliveries within {within} s"
        for delivery in await subscription.fetch(count - len(got), 0.2):
            if ack:
                await delivery.ack()
            got.append(delivery)
    return got


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.record.body for d in deliveries]


def committed(transport: KafkaTransport, kafka_url: ServiceURL, topic: str, group: str) -> dict[int, int]:
    """The group's committed offsets per partition of ``topic``, read with a plain client."""
    kafka_topic = transport.physical(topic)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_url.removeprefix("kafka://"),
            "group.id": transport.group_id(topic, group),
        }
    )
    try:
        partitions = consumer.list_topics(kafka_topic, 5).topics[kafka_topic].partitions
        result = consumer.committed([TopicPartition(kafka_topic, p) for p in partitions], timeout=5)
        return {tp.partition: tp.offset for tp in result if tp.offset >= 0}
    finally:
        consumer.close()


async def test_records_arrive_with_headers_and_key_and_acks_are_committed(
    make_transport: MakeTransport, kafka_url: ServiceURL
) -> None:
    transport = await make_transport()
    subscription = await subscribe(transport, "orders", "billing")
    await transport.publish([Record("orders", b"o%d" % n, {"h": str(n)}, key="k") for n in range(5)])
    got = await fetch_until(subscription, 5)
    assert bodies(got) == [b"o0", b"o1", b"o2", b"o3", b"o4"]
    assert [d.record.headers["h"] for d in got] == ["0", "1", "2", "3", "4"]
    assert {(d.record.topic, d.record.key) for d in got} == {("orders", "k")}
    await subscription.close()
    # One key, one partition: the whole run is committed there.
    assert list(committed(transport, kafka_url, "orders", "billing").values()) == [5]

    again = await subscribe(transport, "orders", "billing")
    await transport.publish([Record("orders", b"o5", key="k")])
    assert bodies(await fetch_until(again, 1)) == [b"o5"]  # the restart resumes after the commit


async def test_out_of_order_acks_commit_only_the_contiguous_run(
    make_transport: MakeTransport, kafka_cluster: MockKafkaCluster
) -> None:
    transport = await make_transport()
    kafka_cluster.create_topic(transport.physical("jobs"), partitions=1)
    subscription = await subscribe(transport, "jobs", "g")
    await transport.publish([Record("jobs", b"j%d" % n) for n in range(5)])
    got = await fetch_until(subscription, 5, ack=False)
    for delivery in (got[4], got[0], got[3], got[1]):  # j2 stays unsettled
        await delivery.ack()
    await subscription.close()
    await got[2].ack()  # too late: the subscription is closed, nothing is committed any more

    restarted = await subscribe(transport, "jobs", "g")
    # Committed up to j2 only, so j2 and everything after it comes again (at least once).
    assert bodies(await fetch_until(restarted, 3)) == [b"j2", b"j3", b"j4"]


async def test_two_members_of_a_group_share_the_partitions(
    make_transport: MakeTransport, kafka_url: ServiceURL
) -> None:
    transport = await make_transport()
    first = await subscribe(transport, "events", "workers")
    second = await subscribe(transport, "events", "workers")
    other_group = await subscribe(transport, "events", "audit")
    deadline = time.monotonic() + 15
    while not (first.assignment and second.assignment):  # both joined and the rebalance is done
        assert time.monotonic() < deadline, "the group did not settle with two members"
        await asyncio.gather(first.fetch(1, 0.1), second.fetch(1, 0.1))
    assert not set(first.assignment) & set(second.assignment)

    sent = [b"e%d" % n for n in range(40)]
    await transport.publish([Record("events", body, key=body.decode()) for body in sent])
    seen: list[bytes] = []
    per_member = {id(first): 0, id(second): 0}
    deadline = time.monotonic() + 15
    while len(seen) < len(sent):
        assert time.monotonic() < deadline, f"the group got {len(seen)} of {len(sent)}"
        for member in (first, second):
            for delivery in await member.fetch(40, 0.05):
                await delivery.ack()
                seen.append(delivery.record.body)
                per_member[id(member)] += 1
    assert sorted(seen) == sorted(sent)  # each record once in the group
    assert all(per_member.values()), per_member  # and both members did some of the work
    assert sorted(bodies(await fetch_until(other_group, 40))) == sorted(sent)  # the other group: all


# A group member in another process: takes one record without committing it, then waits to be killed.
_DOOMED_MEMBER = """
import sys
import confluent_kafka

servers, group_id, topic = sys.argv[1:4]
consumer = confluent_kafka.Consumer({
    "bootstrap.servers": servers, "group.id": group_id, "enable.auto.commit": False,
    "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500,
})
consumer.subscribe([topic])
while True:
    message = consumer.poll(1)
    if message is not None and message.error() is None:
        print("took", message.value().decode(), flush=True)
        break
sys.stdin.read()
"""


async def test_records_of_a_killed_member_are_redelivered_after_its_session_times_out(
    make_transport: MakeTransport, kafka_url: ServiceURL
) -> None:
    transport = await make_transport()
    await transport.publish([Record("invoices", b"inv-1")])
    member = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED_MEMBER,
        kafka_url.removeprefix("kafka://"),
        transport.group_id("invoices", "billing"),
        transport.physical("invoices"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert member.stdout is not None
        line = await asyncio.wait_for(member.stdout.readline(), 30)
        assert line.decode().strip() == "took inv-1"
    finally:
        if member.returncode is None:
            member.kill()  # SIGKILL: no commit, no LeaveGroup; only the session timeout frees its partitions
        await member.wait()
    subscription = await subscribe(transport, "invoices", "billing")
    assert bodies(await fetch_until(subscription, 1, within=20)) == [b"inv-1"]


async def test_acks_of_deliveries_from_before_a_rebalance_are_ignored(
    make_transport: MakeTransport, kafka_url: ServiceURL, kafka_cluster: MockKafkaCluster
) -> None:
    transport = await make_transport()
    kafka_cluster.create_topic(transport.physical("shipments"), partitions=2)
    first = await subscribe(transport, "shipments", "g")
    sent = [b"s%d" % n for n in range(10)]
    await transport.publish([Record("shipments", body, key=body.decode()) for body in sent])
    stale = await fetch_until(first, 10, ack=False)  # the first member owns both partitions

    second = await subscribe(transport, "shipments", "g")
    main = transport.physical("shipments")

    def owned(member: KafkaSubscription) -> int:
        return sum(topic == main for topic, _partition in member.assignment)

    deadline = time.monotonic() + 15
    while not owned(first) == owned(second) == 1:
        assert time.monotonic() < deadline, "the group did not rebalance"
        await asyncio.gather(first.fetch(10, 0.1), second.fetch(10, 0.1))  # not acked
    for delivery in stale:
        await delivery.ack()  # settled after the rebalance took the partitions away: ignored
    await first.close()  # closing commits every commit point synchronously
    await second.close()
    assert committed(transport, kafka_url, "shipments", "g") == {}

    third = await subscribe(transport, "shipments", "g")
    assert sorted(bodies(await fetch_until(third, 10))) == sorted(sent)
    await third.close()
    assert sum(committed(transport, kafka_url, "shipments", "g").values()) == len(sent)


# A frozen loop never returns to Python for a signal: only the thread method can end the test.
@pytest.mark.timeout(60, method="thread")
async def test_commits_while_members_join_do_not_freeze_the_event_loop(make_transport: MakeTransport) -> None:
    # A commit made on the loop used to block inside librdkafka while the consumer thread sat in a
    # rebalance callback waiting for the subscription's lock: the event loop froze for good. Here
    # members join one after another while the first acks (and commits) a steady flow.
    brokers = [Broker(await make_transport(), fetch_timeout=0.5) for _ in range(3)]
    handled: set[int] = set()
    everything = asyncio.Event()
    total = 300

    async def handle(data: dict[str, int]) -> None:
        handled.add(data["n"])
        if len(handled) == total:
            everything.set()

    for broker in brokers:
        broker.add_subscriber("events", handle, group="g")

    async def publish() -> None:
        for first in range(0, total, 10):
            await brokers[0].publish_batch("events", [{"n": n} for n in range(first, first + 10)])
            await asyncio.sleep(0.02)

    try:
        await brokers[0].start()
        publisher = asyncio.create_task(publish())
        for broker in brokers[1:]:
            await asyncio.sleep(0.3)
            await broker.start()
        await publisher
        await asyncio.wait_for(everything.wait(), 30)
    finally:
        for broker in brokers:
            await broker.stop(drain_timeout=0)
    assert handled == set(range(total))


async def test_a_member_that_does_not_fetch_still_takes_part_in_rebalances(
    make_transport: MakeTransport, kafka_cluster: MockKafkaCluster
) -> None:
    transport = await make_transport()
    kafka_cluster.create_topic(transport.physical("parcels"), partitions=2)
    main = transport.physical("parcels")

    def owned(member: KafkaSubscription) -> int:
        return sum(topic == main for topic, _partition in member.assignment)

    busy = await subscribe(transport, "parcels", "g")  # its handlers are all busy: it stops fetching
    deadline = time.monotonic() + 15
    while owned(busy) < 2:
        assert time.monotonic() < deadline, "the first member got no partitions"
        await busy.fetch(1, 0.1)
    newcomer = await subscribe(transport, "parcels", "g")
    deadline = time.monotonic() + 15
    while not owned(busy) == owned(newcomer) == 1:  # the busy member gave one up without a fetch
        assert time.monotonic() < deadline, f"no rebalance: {busy.assignment} / {newcomer.assignment}"
        await newcomer.fetch(1, 0.1)
    sent = [b"p%d" % n for n in range(10)]
    await transport.publish([Record("parcels", body, key=body.decode()) for body in sent])
    seen: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(seen) < len(sent):  # and fetching again resumes its paused partitions
        assert time.monotonic() < deadline, f"got {len(seen)} of {len(sent)}"
        for member in (busy, newcomer):
            for delivery in await member.fetch(10, 0.1):
                await delivery.ack()
                seen.append(delivery.record.body)
    assert sorted(seen) == sorted(sent)


async def test_records_of_one_key_keep_their_order(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    subscription = await subscribe(transport, "ticks", "g")
    records = [Record("ticks", f"{key}:{n}".encode(), key=key) for n in range(20) for key in "abc"]
    await transport.publish(records)
    got = await fetch_until(subscription, len(records))
    for key in "abc":
        sequence = [int(d.record.body.split(b":")[1]) for d in got if d.record.key == key]
        assert sequence == list(range(20)), key


async def test_retry_comes_back_to_the_group_after_its_delay(
    make_transport: MakeTransport, kafka_url: ServiceURL
) -> None:
    transport = await make_transport()
    subscription = await subscribe(transport, "mail", "sender")
    other = await subscribe(transport, "mail", "archive")
    await transport.publish([Record("mail", b"m", {"x": "1"}, key="user-1")])
    [first] = await fetch_until(subscription, 1, ack=False)
    retried_at = time.time()
    await first.retry(1.0, {**first.record.headers, ATTEMPT: "2"})
    # Meanwhile a fresh record is not held up behind the delayed one.
    await transport.publish([Record("mail", b"n", key="user-2")])
    [fresh, again] = await fetch_until(subscription, 2)
    assert (fresh.record.body, again.record.body) == (b"n", b"m")
    assert again.record.topic == "mail"
    assert again.record.key == "user-1"
    assert again.attempt == 2
    assert again.record.headers["x"] == "1"
    assert float(again.record.headers[NOT_BEFORE]) >= retried_at + 1.0
    assert time.time() >= float(again.record.headers[NOT_BEFORE])  # not handed out before it was due
    assert sorted(bodies(await fetch_until(other, 2))) == [b"m", b"n"]  # the retry is the group's own
    await subscription.close()
    # The original was committed after the retry record was confirmed: nothing comes back.
    assert committed(transport, kafka_url, "mail", "sender")
    restarted = await subscribe(transport, "mail", "sender")
    assert await restarted.fetch(10, 1.0) == []


async def test_delayed_publish_is_held_until_due(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    subscription = await subscribe(transport, "reminders", "g")
    await transport.publish([Record("reminders", b"later", key="k")], delay=1.0)
    await transport.publish([Record("reminders", b"now", key="k")])
    got = await fetch_until(subscription, 2)
    assert bodies(got) == [b"now", b"later"]
    assert time.time() >= float(got[1].record.headers[NOT_BEFORE])


async def test_delayed_records_beyond_max_held_pause_fetching_and_all_arrive(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport(max_held=2)
    subscription = await subscribe(transport, "batches", "g")
    await transport.publish([Record("batches", b"b%d" % n, key=f"k{n}") for n in range(6)], delay=0.5)
    got = await fetch_until(subscription, 6)
    assert sorted(bodies(got)) == [b"b%d" % n for n in range(6)]
    assert all(time.time() >= float(d.record.headers[NOT_BEFORE]) for d in got)


async def test_released_record_is_handed_out_again_and_stays_uncommitted(
    make_transport: MakeTransport,
) -> None:
    transport = await make_transport()
    subscription = await subscribe(transport, "tasks", "g")
    await transport.publish([Record("tasks", b"t")])
    [delivery] = await fetch_until(subscription, 1, ack=False)
    await delivery.release()
    [again] = await fetch_until(subscription, 1, ack=False)
    assert again.record == delivery.record
    await again.release()
    await subscription.close()
    restarted = await subscribe(transport, "tasks", "g")
    assert bodies(await fetch_until(restarted, 1)) == [b"t"]


async def test_dead_letter_topic_is_kept_browsed_and_purged(make_transport: MakeTransport) -> None:
    transport = await make_transport()
    dead = [Record("orders.dlq", b"d%d" % n, {"ms_dlq_reason": "exhausted"}) for n in range(3)]
    await transport.publish(dead)  # nobody subscribes to the dead letters
    browsed = await transport.browse("orders.dlq", limit=10)
    assert sorted(bodies_of(browsed)) == [b"d0", b"d1", b"d2"]
    assert all(r.headers["ms_dlq_reason"] == "exhausted" and r.topic == "orders.dlq" for r in browsed)
    assert len(await transport.browse("orders.dlq", limit=2)) == 2
    assert len(await transport.browse("orders.dlq", limit=10)) == 3  # browsing consumed nothing

    assert await transport.purge("orders.dlq") == 3
    assert await transport.browse("orders.dlq", limit=10) == []
    assert await transport.purge("orders.dlq") == 0
    await transport.publish([Record("orders.dlq", b"d3", key="x")])
    assert bodies_of(await transport.browse("orders.dlq", limit=10)) == [b"d3"]
    assert await transport.purge("orders.dlq") == 1  # the marks of the earlier purge are kept too
    await transport.publish([Record("orders.dlq", b"d4", key="y")])
    assert bodies_of(await transport.browse("orders.dlq", limit=10)) == [b"d4"]
    assert await transport.browse("never.used", limit=10) == []


def bodies_of(records: list[Record]) -> list[bytes]:
    return [r.body for r in records]


async def test_a_batch_publish_delivers_every_record_in_key_order(
    make_transport: MakeTransport, kafka_cluster: MockKafkaCluster
) -> None:
    transport = await make_transport()
    kafka_cluster.create_topic(transport.physical("bulk"), partitions=4)
    subscription = await subscribe(transport, "bulk", "g")
    await transport.publish([])  # nothing to confirm: returns at once
    records = [Record("bulk", b"%d:%d" % (n % 7, n), {"n": str(n)}, key=str(n % 7)) for n in range(500)]
    await transport.publish(records)
    got = bodies(await fetch_until(subscription, 500, within=30))
    assert sorted(got) == sorted(r.body for r in records)
    for key in range(7):  # one delivery report per record, and per key in publish order
        mine = [b for b in got if b.startswith(b"%d:" % key)]
        assert mine == [r.body for r in records if r.key == str(key)]


async def test_publish_fails_after_publish_timeout_while_brokers_are_down_and_nothing_is_lost(
    make_transport: MakeTransport, kafka_cluster: MockKafkaCluster
) -> None:
    transport = await make_transport(publish_timeout=1.0)
    subscription = await subscribe(transport, "payments", "g")
    await transport.publish([Record("payments", b"before", key="k")])
    brokers = range(1, kafka_cluster.num_brokers + 1)
    for broker in brokers:
        kafka_cluster.set_broker_down(broker)
    try:
        with pytest.raises(ServiceUnavailableError, match=r"publish failed|did not confirm"):
            await transport.publish([Record("payments", b"lost-in-outage", key="k")])
    finally:
        for broker in brokers:
            kafka_cluster.set_broker_up(broker)
    # The client reconnects with its own backoff; a caller retries a failed publish meanwhile.
    deadline = time.monotonic() + 30
    while True:
        try:
            await transport.publish([Record("payments", b"after", key="k")])
            break
        except ServiceUnavailableError:
            assert time.monotonic() < deadline, "the producer did not recover after the outage"
    got = bodies(await fetch_until(subscription, 2, within=30))
    # The failed publish was reported, so the caller knows; the others arrive in order.
    assert [body for body in got if body != b"lost-in-outage"] == [b"before", b"after"]


async def test_bad_url_and_options_are_config_errors(kafka_url: ServiceURL) -> None:
    with pytest.raises(ConfigError, match="session_timoeut"):
        KafkaTransport(str(kafka_url), session_timoeut=1)
    with pytest.raises(ConfigError) as info:
        KafkaTransport(str(kafka_url), publish_timeout=0, max_held=-1, num_partitions=0, prefix="a b")
    assert {p.path for p in info.value.problems} == {
        "publish_timeout",
        "max_held",
        "num_partitions",
        "prefix",
    }
    with pytest.raises(ConfigError, match="kafka://host:port"):
        KafkaTransport("redis://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="bad broker address"):
        KafkaTransport("kafka://127.0.0.1:notaport")
    with pytest.raises(ConfigError, match="unknown Kafka transport option"):
        create_transport(str(kafka_url), claim_idle=1.0)
    assert isinstance(create_transport(str(kafka_url), prefix="p"), KafkaTransport)


async def test_unreachable_cluster_fails_start_with_service_unavailable() -> None:
    transport = KafkaTransport("kafka://127.0.0.1:1", connect_timeout=0.5)
    with pytest.raises(ServiceUnavailableError, match="did not answer"):
        await transport.start()
    await transport.stop()
