"""The transactional outbox and the idempotent inbox on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import BaseModel
from sqlalchemy import MetaData, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from mainspring.db import NAMING_CONVENTION, Base, Database
from mainspring.errors import InternalError, ServiceUnavailableError
from mainspring.events import (
    Inbox,
    InboxEntry,
    Outbox,
    OutboxEntry,
    OutboxRelay,
    TransactionalOutboxEventBus,
    idempotent,
)
from mainspring.messaging import Broker, Message, Record
from mainspring.messaging.memory import MemoryTransport

pytestmark = pytest.mark.integration


class Effect(Base):
    """A business row each handled message writes: counting them counts effects."""

    __tablename__ = "events_test_effect"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    note: Mapped[str] = mapped_column(String(64))


class OrderPlaced(BaseModel):
    event_type: ClassVar[str] = "orders.placed.v1"
    order_id: int


def _metadata() -> MetaData:
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    for model in (OutboxEntry, InboxEntry, Effect):
        model.__table__.to_metadata(metadata)
    return metadata


@pytest.fixture
async def db(database: Database) -> Database:
    """The backend's database with the outbox, inbox and effect tables."""
    await database.create_all(_metadata())
    return database


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A started in-memory broker of its own."""
    made = Broker(MemoryTransport(f"memory://{uuid.uuid4().hex}"), fetch_timeout=0.2)
    await made.start()
    yield made
    await made.stop(drain_timeout=0)


async def _eventually(predicate: Callable[[], Any], what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _n(record: Record) -> int:
    return int(orjson.loads(record.body)["n"])


async def _count(db: Database, model: type[Base], *where: Any) -> int:
    async with db.session() as session:
        return int(
            (await session.execute(select(func.count()).select_from(model).where(*where))).scalar_one()
        )


async def test_outbox_rows_commit_and_roll_back_with_the_business_data(db: Database) -> None:
    outbox = Outbox(db)
    async with db.transaction() as unit:
        unit.session.add(Effect(id="kept", note="x"))
        sent = await outbox.add("orders", OrderPlaced(order_id=1), key="c1")

    async def fail_after_adding() -> None:
        async with db.transaction() as unit:
            unit.session.add(Effect(id="lost", note="x"))
            await outbox.add("orders", OrderPlaced(order_id=2))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_after_adding()
    async with db.session() as session:
        rows = (await session.execute(select(OutboxEntry))).scalars().all()
    assert [(r.message_id, r.topic, r.key, r.published_at) for r in rows] == [(sent.id, "orders", "c1", None)]
    assert rows[0].headers["ce_type"] == "orders.placed.v1"
    assert await _count(db, Effect) == 1


async def test_outbox_add_outside_a_unit_of_work_is_refused(db: Database) -> None:
    with pytest.raises(InternalError, match="unit of work"):
        await Outbox(db).add("orders", {"n": 1})


@pytest.mark.parametrize("retention", [0, 60], ids=["deleted", "kept"])
async def test_relay_publishes_in_order_per_key_and_deletes_or_marks_rows(
    db: Database, broker: Broker, retention: int
) -> None:
    outbox = Outbox(db)
    async with db.transaction():
        for n in range(30):
            await outbox.add("ticks", {"n": n}, key=f"k{n % 3}", headers={"tenant": "t-1"})
    relay = OutboxRelay(db, broker, batch_size=7, retention=retention)
    while await relay.run_once():
        pass
    records = await broker.transport.browse("ticks", limit=100)
    by_key: dict[str, list[int]] = {}
    for record in records:
        by_key.setdefault(record.key or "", []).append(_n(record))
    assert by_key == {f"k{i}": list(range(i, 30, 3)) for i in range(3)}
    assert {record.headers["tenant"] for record in records} == {"t-1"}
    assert await _count(db, OutboxEntry, OutboxEntry.published_at.is_(None)) == 0
    if retention:
        assert await _count(db, OutboxEntry, OutboxEntry.attempts == 1) == 30, "kept and marked"
    else:
        assert await _count(db, OutboxEntry) == 0, "deleted as published"
    assert relay.stats.published == 30
    backlog = await relay.backlog()
    assert (backlog.pending, backlog.oldest_age) == (0, 0.0)


async def test_relayed_messages_count_in_the_broker_stats_like_published_ones(
    db: Database, broker: Broker
) -> None:
    await broker.publish("orders", {"n": -1})
    outbox = Outbox(db)
    async with db.transaction():
        await outbox.add_many("orders", [{"n": n} for n in range(3)])
        await outbox.add_many("invoices", [{"n": n} for n in range(2)])
        await outbox.add("orders", {"n": 3})
    relay = OutboxRelay(db, broker)

    assert await relay.run_once() == 6

    assert broker.stats.published == 7, "one published directly, six relayed in three runs of topics"
    assert relay.stats.published == 6


async def test_relay_wakes_on_commit_and_reports_its_backlog(db: Database) -> None:
    outbox = Outbox(db)
    broker = Broker(MemoryTransport(f"memory://{uuid.uuid4().hex}"), fetch_timeout=0.2)
    got: list[OrderPlaced] = []

    @broker.subscriber("orders.placed.v1", group="mailer")
    async def handle(event: OrderPlaced) -> None:
        got.append(event)

    bus = TransactionalOutboxEventBus(outbox)
    relay = OutboxRelay(db, broker, poll_interval=60)  # only the commit can wake it in time
    async with broker, relay:
        await asyncio.sleep(0.1)  # the relay's first round found nothing and sleeps now
        async with db.transaction():
            await bus.publish(OrderPlaced(order_id=9))
        await _eventually(lambda: got == [OrderPlaced(order_id=9)], "the event through the outbox", within=20)

        async def nothing_pending() -> bool:
            return (await relay.backlog()).pending == 0

        await _eventually(nothing_pending, "the row marked published", within=20)


async def test_cleanup_deletes_old_published_rows_only(db: Database, broker: Broker) -> None:
    outbox = Outbox(db)
    async with db.transaction():
        for n in range(3):
            await outbox.add("t", {"n": n})
    relay = OutboxRelay(db, broker, retention=0.001)
    assert await relay.run_once() == 3
    assert await _count(db, OutboxEntry, OutboxEntry.published_at.is_not(None)) == 3
    async with db.transaction():
        await outbox.add("t", {"n": 99})  # pending: must survive the cleanup
    await asyncio.sleep(0.01)
    assert await relay.cleanup() == 3
    assert await _count(db, OutboxEntry) == 1
    backlog = await relay.backlog()
    assert backlog.pending == 1
    assert backlog.oldest_age >= 0


async def test_inbox_runs_a_handler_once_per_message(db: Database) -> None:
    inbox = Inbox(db)
    message = Message(data={"n": 1})
    runs: list[str] = []

    @idempotent(inbox, consumer="effects")
    async def handle(msg: Message) -> str:
        async with db.transaction() as unit:
            unit.session.add(Effect(id=msg.id, note="once"))
        runs.append(msg.id)
        return "done"

    assert await handle(message) == "done"
    assert await handle(message) is None
    assert runs == [message.id]
    assert await inbox.seen(message.id, "effects")
    assert not await inbox.seen(message.id, "other-consumer")
    assert await _count(db, Effect) == 1


async def test_inbox_forgets_a_failed_attempt_so_the_retry_runs(db: Database) -> None:
    inbox = Inbox(db)
    message = Message(data={"n": 1})
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        async with db.transaction() as unit:
            unit.session.add(Effect(id=f"{message.id}-{len(attempts)}", note="x"))
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    with pytest.raises(RuntimeError):
        await inbox.process(message, "c", flaky)
    assert not await inbox.seen(message.id, "c")
    assert await inbox.process(message, "c", flaky)
    assert await _count(db, Effect) == 1  # the failed attempt's write rolled back with its inbox row


class _FailingOnce(MemoryTransport):
    """Refuses the first publish, as a broker that is down would, then publishes normally."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.failed = False

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        if not self.failed:
            self.failed = True
            raise ServiceUnavailableError("broker down")
        await super().publish(records, delay=delay)


async def test_failed_publish_leaves_the_claimed_rows_pending(db: Database) -> None:
    transport = _FailingOnce(f"memory://{uuid.uuid4().hex}")
    broker = Broker(transport)
    outbox = Outbox(db)
    async with db.transaction():
        sent = [await outbox.add("orders", {"n": n}, key="c1") for n in range(5)]
    relay = OutboxRelay(db, broker)
    async with broker:
        with pytest.raises(ServiceUnavailableError, match="broker down"):
            await relay.run_once()
        assert await _count(db, OutboxEntry, OutboxEntry.published_at.is_(None)) == 5
        assert relay.stats.published == broker.stats.published == 0
        assert await relay.run_once() == 5
        assert broker.stats.published == 5
        records = await transport.browse("orders", limit=10)
    assert [r.headers["ce_id"] for r in records] == [m.id for m in sent]
    assert await _count(db, OutboxEntry) == 0


class _PublishThenHang(MemoryTransport):
    """Publishes for real, then hangs before returning: a relay killed right after sending, before commit."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.hang = True
        self.sent_once = asyncio.Event()

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        await super().publish(records, delay=delay)
        if self.hang:
            self.sent_once.set()
            await asyncio.Event().wait()


async def test_killed_relay_republishes_and_the_inbox_keeps_effects_exactly_once(db: Database) -> None:
    name = f"memory://{uuid.uuid4().hex}"
    transport = _PublishThenHang(name)
    consumer = Broker(MemoryTransport(name), inbox=Inbox(db), fetch_timeout=0.2)
    producer = Broker(transport)
    outbox = Outbox(db)

    @consumer.subscriber("payments", group="ledger", inbox=True, concurrency=4)
    async def handle(message: Message) -> None:
        async with db.transaction() as unit:
            unit.session.add(Effect(id=message.id, note="paid"))

    async with db.transaction():
        sent = [await outbox.add("payments", {"n": n}) for n in range(50)]
    async with consumer, producer:
        killed = OutboxRelay(db, producer, batch_size=20)
        await killed.start()
        await asyncio.wait_for(transport.sent_once.wait(), 10)
        await killed.stop()  # mid-batch: 20 records out, their rows not marked
        assert await _count(db, OutboxEntry, OutboxEntry.published_at.is_(None)) == 50
        transport.hang = False
        async with OutboxRelay(db, producer, batch_size=20):
            await _eventually(lambda: _count_is(db, 50), "all 50 effects")
            await asyncio.sleep(0.3)
        records = await transport.browse("payments", limit=1000)
    assert len(records) >= 70  # the first batch went out twice
    assert await _count(db, Effect) == 50  # ...yet every effect happened once
    assert consumer.stats.duplicates_skipped >= 1
    assert {r.headers["ce_id"] for r in records} == {m.id for m in sent}


async def _count_is(db: Database, expected: int) -> bool:
    return await _count(db, Effect) == expected


@pytest.fixture(params=["postgres", "mariadb"])
async def server_db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """PostgreSQL or MariaDB (SQLite runs a single relay: it has no row locks to skip)."""
    service = "postgres_url" if request.param == "postgres" else "mariadb_url"
    url = str(request.getfixturevalue(service).sqlalchemy_url)
    database = Database(url, pool_size=5, max_overflow=5, pool_timeout=10.0, connect_timeout=5.0)
    await database.start()
    await database.create_all(_metadata())
    yield database
    await database.stop()


async def test_concurrent_relays_never_publish_a_claimed_row_twice(
    server_db: Database, broker: Broker
) -> None:
    db = server_db
    outbox = Outbox(db)
    total = 10_000
    for start in range(0, total, 1000):
        async with db.transaction():
            await outbox.add_many(
                "bulk",
                [
                    Message(data={"n": n}, key=f"k{n % 50}" if n % 2 else None)
                    for n in range(start, start + 1000)
                ],
            )
    relays = [OutboxRelay(db, broker, batch_size=250) for _ in range(3)]
    # And one relay running its own loop with two batches in flight at once.
    looped = OutboxRelay(db, broker, batch_size=250, concurrency=2, listen=False, poll_interval=0.05)
    relays.append(looped)

    async def drain(relay: OutboxRelay) -> None:
        while await relay.run_once():
            pass

    await looped.start()
    try:
        await asyncio.gather(*(drain(r) for r in relays[:3]))
        for _ in range(600):  # the loop's last batches, within 30 s
            if sum(r.stats.published for r in relays) >= total:
                break
            await asyncio.sleep(0.05)
    finally:
        await looped.stop()
    assert looped.stats.published > 0
    records = await broker.transport.browse("bulk", limit=total * 2)
    ids = [r.headers["ce_id"] for r in records]
    assert len(ids) == total
    assert len(set(ids)) == total
    assert sum(r.stats.published for r in relays) == total
    assert await _count(db, OutboxEntry) == 0
    per_key: dict[str, list[int]] = {}
    for record in records:
        if record.key is not None:
            per_key.setdefault(record.key, []).append(_n(record))
    assert all(values == sorted(values) for values in per_key.values()), "order per key kept"
