"""The transactional outbox: ``Outbox.add`` in a unit of work, ``OutboxRelay`` publishes afterwards.

A message added to the outbox is a row written in the same transaction as the business data, so
either both commit or neither does. :class:`OutboxRelay` claims pending rows in batches, settles
them (deletes them, or marks them published when ``retention`` keeps them) and publishes them
through a :class:`~mainspring.messaging.Broker`'s transport (counted in the broker's
``stats.published`` like :meth:`~mainspring.messaging.Broker.publish_batch`), all in the database
transaction that holds the claim, so a failed publish leaves the rows pending:

* PostgreSQL and MariaDB claim with ``FOR UPDATE SKIP LOCKED``, so several relays share the work and
  no claimed row is published by two relays. A relay that dies mid-batch loses its locks with its
  connection; the rows stay pending and are published again (at least once).
* Order per key: a keyed row is claimed only when no earlier pending row has the same key, and the
  relay that holds the oldest pending row of a key publishes the following ones of that key in the
  same batch. Rows without a key are not ordered among themselves across relays.
* Waking: on commit PostgreSQL sends ``NOTIFY mainspring_outbox``; relays ``LISTEN`` and also poll
  every ``poll_interval`` as a fallback. Relays in the same process are woken directly on commit.
* SQLite has no row locks to skip: run a single relay there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import Table, delete, event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session

from mainspring._lifecycle import AsyncLifecycle
from mainspring.db import Database
from mainspring.db._types import utcnow
from mainspring.errors import BadRequestError, ConfigError, InternalError, MainspringError
from mainspring.events._claim import BatchClaim
from mainspring.events._models import KEY_LENGTH, OutboxEntry
from mainspring.logging import get_logger
from mainspring.messaging import Broker, Codec, Message, Record, as_message, build_record
from mainspring.messaging.base import check_topic

__all__ = ["DEFAULT_CHANNEL", "Outbox", "OutboxBacklog", "OutboxRelay", "OutboxRelayStats"]

log = get_logger("mainspring.events")

#: The PostgreSQL ``NOTIFY`` channel the outbox signals on commit.
DEFAULT_CHANNEL = "mainspring_outbox"
_NOTIFY_INFO_KEY = "mainspring.outbox.notify"
_WAKE_INFO_KEY = "mainspring.outbox.wake"

# Relays waiting on a database in this process, woken after a commit that added outbox rows.
_local_waiters: weakref.WeakKeyDictionary[Database, set[asyncio.Event]] = weakref.WeakKeyDictionary()


@event.listens_for(Session, "before_commit")
def _notify_before_commit(session: Session) -> None:
    """Send one ``NOTIFY`` per transaction that added outbox rows (PostgreSQL delivers it on commit)."""
    channel = session.info.pop(_NOTIFY_INFO_KEY, None)
    if channel is not None:
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


_INSERT = insert(cast(Table, OutboxEntry.__table__))


def _wake_local(database: Database) -> None:
    for waiter in list(_local_waiters.get(database, ())):
        waiter.set()


class Outbox:
    """Add messages to the ``outbox`` table inside the caller's unit of work.

    ::

        outbox = Outbox(db)
        async with db.transaction():
            await orders.add(order)
            await outbox.add("orders", OrderPlaced(order_id=order.id), key=str(order.customer_id))
    """

    def __init__(
        self,
        database: Database,
        *,
        codec: Codec | None = None,
        source: str = "mainspring",
        channel: str = DEFAULT_CHANNEL,
    ) -> None:
        """Write to ``database``'s outbox; ``codec`` and ``source`` as for a broker."""
        self.database = database
        self.codec = codec
        self.source = source
        self.channel = channel

    async def add(
        self,
        topic: str,
        message: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Add ``message`` (a :class:`Message`, a model or plain data) for ``topic``; return the message.

        Must run inside ``async with database.transaction()``: the row commits or rolls back with
        the caller's data (a SAVEPOINT rolled back takes it along). Raises
        :class:`~mainspring.errors.InternalError` outside a unit of work.
        """
        [added] = await self.add_many(topic, [as_message(message, key)], headers=headers)
        return added

    async def add_many(
        self, topic: str, messages: Iterable[Any], *, headers: Mapping[str, str] | None = None
    ) -> list[Message]:
        """Add several messages for ``topic`` with one INSERT; they are published in this order."""
        check_topic(topic)
        unit = self.database.current()
        if unit is None:
            raise InternalError(
                "Outbox.add() needs an active unit of work: call it inside `async with db.transaction():`"
            )
        built = [as_message(item) for item in messages]
        if not built:
            return []
        now = utcnow()
        rows = []
        for msg in built:
            if msg.key is not None and len(msg.key) > KEY_LENGTH:
                raise BadRequestError(
                    f"outbox message keys are limited to {KEY_LENGTH} characters", code="invalid_message"
                )
            record = build_record(topic, msg, headers=headers, codec=self.codec, source=self.source)
            rows.append(
                {
                    "message_id": msg.id,
                    "topic": topic,
                    "key": msg.key,
                    "headers": dict(record.headers),
                    "body": record.body,
                    "created_at": now,
                    "attempts": 0,
                }
            )
        # A Core INSERT (executemany for several rows) on the unit's connection: no ORM bulk-insert
        # machinery, and a SAVEPOINT that rolls back removes the rows with it.
        connection = await unit.session.connection()
        await connection.execute(_INSERT, rows)
        info = unit.session.info
        if self.database.dialect == "postgresql":
            info[_NOTIFY_INFO_KEY] = self.channel
        if not info.get(_WAKE_INFO_KEY):
            info[_WAKE_INFO_KEY] = True
            database = self.database
            unit.on_commit(lambda: _wake_local(database))
        return built


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """What is waiting: the number of pending rows and the age of the oldest, in seconds."""

    pending: int
    oldest_age: float


@dataclass(slots=True)
class OutboxRelayStats:
    """Counters of one relay."""

    published: int = 0
    batches: int = 0
    failures: int = 0
    cleaned: int = 0
    #: Rows published per second over the last minute.
    published_per_second: float = 0.0


class OutboxRelay(AsyncLifecycle):
    """Publish pending outbox rows through ``broker`` (see the module docstring for the guarantees).

    The relay does not start or stop the broker; the service does. ``batch_size`` rows are claimed
    per transaction; ``poll_interval`` is the fallback wake-up period. ``concurrency`` batches are in
    flight at once (one claiming while another publishes, as several relays would; ``SKIP LOCKED``
    keeps them apart and the order per key holds): 2 overlaps the database and the broker round trips.
    SQLite has no row locks to skip, so there it must be 1. Published rows are deleted in
    the transaction that publishes them; with ``retention`` > 0 they are marked published instead and
    deleted ``retention`` seconds later, checked every ``cleanup_interval`` seconds.
    """

    def __init__(
        self,
        database: Database,
        broker: Broker,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        listen: bool = True,
        retention: float = 0.0,
        cleanup_interval: float = 60.0,
        channel: str = DEFAULT_CHANNEL,
        concurrency: int = 1,
    ) -> None:
        """Configure the relay; nothing runs before :meth:`start`."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if concurrency > 1 and database.dialect == "sqlite":
            raise ConfigError(
                "an outbox relay on SQLite runs one batch at a time (no row locks to skip): concurrency=1"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for name, value in (("poll_interval", poll_interval), ("cleanup_interval", cleanup_interval)):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(retention, int | float) or retention < 0:
            raise ConfigError(f"retention must be a number of seconds >= 0, got {retention!r}")
        self.database = database
        self.broker = broker
        self.batch_size = batch_size
        self.poll_interval = float(poll_interval)
        self.listen = listen
        self.retention = float(retention)
        self.cleanup_interval = float(cleanup_interval)
        self.channel = channel
        self.concurrency = concurrency
        self.stats = OutboxRelayStats()
        # Pending rows read per round to find each key's oldest row: room for other relays' claims.
        self._claim = BatchClaim(
            database.dialect, batch_size=batch_size, window=batch_size * 4, mark=bool(retention)
        )
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: AsyncConnection | None = None
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._last_cleanup = 0.0

    # -- one round --------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim, settle and publish one batch; return how many rows were published.

        Up to ``batch_size`` pending rows are locked (``SKIP LOCKED``: rows another relay holds are
        skipped; per key only the oldest pending row and the ones right after it), settled (deleted,
        or marked published when ``retention`` keeps them), then published in ``seq`` order, all in
        one transaction: a failed publish rolls the settling back and the rows stay pending. On
        PostgreSQL the claim and the settling are one statement.
        """
        async with self.database.transaction() as unit:
            rows = await self._claim(unit.session)
            if rows:
                await self._publish(rows)
        if rows:
            self._count(len(rows))
        return len(rows)

    async def _publish(self, rows: Sequence[Any]) -> None:
        # Rows are (topic, key, headers as JSON text, body). Runs of one topic go out together; the
        # order across the whole batch is kept.
        loads = orjson.loads
        records = [
            Record(topic=topic, body=bytes(body), headers=loads(headers), key=key)
            for topic, key, headers, body in rows
        ]
        # Each run published counts in ``broker.stats.published`` as ``Broker.publish_batch`` counts it
        # (the Prometheus collector's ``messaging_broker_published`` reads it), one addition per run.
        stats = self.broker.stats
        start = 0
        for index in range(1, len(records) + 1):
            if index == len(records) or records[index].topic != records[start].topic:
                await self.broker.transport.publish(records[start:index])
                stats.published += index - start
                start = index

    def _count(self, published: int) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.published += published
        stats.batches += 1
        self._recent.append((now, published))
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        span = max(1.0, now - self._recent[0][0]) if self._recent else 1.0
        stats.published_per_second = sum(n for _, n in self._recent) / span

    async def backlog(self) -> OutboxBacklog:
        """Return the pending count and the age of the oldest pending row (for health and metrics)."""
        query = select(func.count(), func.min(OutboxEntry.created_at)).where(
            OutboxEntry.published_at.is_(None)
        )
        async with self.database.session() as session:
            count, oldest = (await session.execute(query)).one()
        age = 0.0
        if oldest is not None:
            age = max(0.0, (utcnow() - oldest).total_seconds())
        return OutboxBacklog(pending=int(count), oldest_age=age)

    async def cleanup(self) -> int:
        """Delete rows published more than ``retention`` seconds ago; return how many.

        The relay's loop runs it every ``cleanup_interval`` seconds when ``retention`` > 0. With
        ``retention`` 0 published rows are deleted as they are published, and this removes the rows
        an earlier relay with ``retention`` kept.
        """
        cutoff = utcnow() - dt.timedelta(seconds=self.retention)
        async with self.database.transaction() as unit:
            result = await unit.session.execute(
                delete(OutboxEntry).where(
                    OutboxEntry.published_at.is_not(None), OutboxEntry.published_at < cutoff
                )
            )
        removed = int(getattr(result, "rowcount", 0) or 0)
        self.stats.cleaned += removed
        return removed

    # -- the loop ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (PostgreSQL) and the relay loops (``concurrency`` of them)."""
        if self._tasks:
            return
        _local_waiters.setdefault(self.database, set()).add(self._wake)
        if self.listen and self.database.dialect == "postgresql":
            await self._start_listener()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"mainspring-outbox-relay-{n}")
            for n in range(self.concurrency)
        ]

    async def _start_listener(self) -> None:
        try:
            connection = await self.database.engine.connect()
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(self.channel, self._on_notify)
        except (MainspringError, OSError) as exc:
            log.warning("outbox LISTEN unavailable; polling only", channel=self.channel, error=str(exc))
            return
        self._listener = connection

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop (a batch in flight is rolled back and published again later) and unlisten."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiters = _local_waiters.get(self.database)
        if waiters is not None:
            waiters.discard(self._wake)
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                published = await self.run_once()
                if self.retention and time.monotonic() - self._last_cleanup > self.cleanup_interval:
                    self._last_cleanup = time.monotonic()
                    await self.cleanup()
            except Exception as exc:  # noqa: BLE001 - the relay outlives a failed round; logged, retried
                failures += 1
                self.stats.failures += 1
                pause = min(30.0, 0.2 * 2 ** min(failures, 8))
                log.warning(
                    "outbox relay round failed; retrying",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=pause,
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            if published >= self.batch_size:
                continue  # more is waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
