"""The consuming half of the Kafka transport: one confluent-kafka consumer per subscription.

A :class:`KafkaSubscription` owns a ``confluent_kafka.Consumer`` and a one-thread executor; every
blocking or callback-serving call on the consumer (``poll``, ``close``, the rebalance and commit
callbacks, the commits) runs on that thread, never on the event loop. The thread files what it
fetched itself, so a cancelled ``fetch`` loses nothing. Asynchronous commits go there too, at most
once per ``commit_interval`` (later while the thread waits in a poll): made from the loop, a commit
blocks inside librdkafka while the thread is in a rebalance callback, and that callback needs the
subscription's lock -- a deadlock that froze the event loop.

Offsets. Deliveries may be settled out of order (the broker runs handler lanes concurrently), while
Kafka keeps one committed offset per partition. Each assigned partition has a :class:`_Track` of the
offsets fetched and not yet settled; the commit point moves only over a contiguous run of settled
offsets, so a crash redelivers everything not yet done (and possibly some that were: at least once).
A released record stays unsettled and is handed out again from memory (no seek).

Rebalances. On revoke the contiguous commit points are committed synchronously and the partition's
track is dropped, together with records fetched from it but not yet handed out. A delivery of a
revoked partition that is settled afterwards is ignored: the partition's new owner gets it again.

Delays. A record whose ``ms_not_before`` header lies in the future (retries, delayed publishes) is
held in memory until due without blocking the records behind it; it stays unsettled meanwhile, so
the commit point waits for it. Past ``max_held`` held records, fetching pauses until some are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mainspring.errors import ServiceUnavailableError
from mainspring.logging import get_logger
from mainspring.messaging._transport import NOT_BEFORE, Delivery, Record, Subscription

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

__all__ = ["KafkaDelivery", "KafkaSubscription", "decode_headers", "not_before"]

log = get_logger("mainspring.messaging")

#: Seconds without a fetch after which the subscription polls (paused) by itself, so that rebalances
#: are served while the broker does not fetch (all its handler lanes are busy).
KEEPALIVE = 1.0

#: One hop to the consumer thread files up to this many records (or what the caller asked for, if
#: more): a hop costs more than the records it brings. The partitions are this member's anyway, and
#: a revoke drops whatever of theirs is filed.
POLL_BATCH = 200

#: Produces one record to a physical topic and resolves once Kafka confirmed it.
Produce = Callable[[str, Record], Awaitable[None]]


def decode_headers(
    raw: Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]] | None,
) -> dict[str, str]:
    """Kafka header values are bytes; ours are text (a later duplicate name wins)."""
    headers: dict[str, str] = {}
    pairs = raw.items() if isinstance(raw, Mapping) else raw or ()
    for name, value in pairs:
        if value is None:
            headers[name] = ""
        elif isinstance(value, bytes):
            headers[name] = value.decode("utf-8", "replace")
        else:
            headers[name] = value
    return headers


def not_before(headers: Mapping[str, str]) -> float | None:
    """The ``ms_not_before`` header as epoch seconds, or ``None`` when absent or unreadable."""
    raw = headers.get(NOT_BEFORE)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class _Track:
    """Fetched-but-unsettled offsets of one assigned partition, in fetch order."""

    __slots__ = ("generation", "last", "pending", "point", "settled")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pending: deque[int] = deque()
        self.settled: set[int] = set()
        self.last = -1
        #: The offset to commit: one past the contiguous run of settled records (None: nothing yet).
        self.point: int | None = None

    def add(self, offset: int) -> None:
        # A record fetched twice (the client reset its position) is tracked once.
        if offset > self.last:
            self.pending.append(offset)
            self.last = offset

    def settle(self, offset: int) -> int | None:
        """Mark ``offset`` done; return the new commit point if it moved."""
        if not self.pending or offset < self.pending[0]:
            return None  # settled before (a record handed out twice)
        self.settled.add(offset)
        point = None
        while self.pending and self.pending[0] in self.settled:
            done = self.pending.popleft()
            self.settled.discard(done)
            point = done + 1
        if point is not None:
            self.point = point
        return point


class KafkaDelivery(Delivery):
    """One record fetched by a :class:`KafkaSubscription`, with where it came from."""

    __slots__ = ("_settled", "_subscription", "generation", "kafka_topic", "offset", "partition")

    def __init__(
        self,
        record: Record,
        subscription: KafkaSubscription,
        kafka_topic: str,
        partition: int,
        offset: int,
        generation: int,
    ) -> None:
        super().__init__(record)
        self._subscription = subscription
        self.kafka_topic = kafka_topic
        self.partition = partition
        self.offset = offset
        self.generation = generation
        self._settled = False

    def _claim(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    async def ack(self) -> None:
        """Mark the offset done; it is committed once every earlier offset of the partition is."""
        if self._claim():
            self._subscription.settle(self)

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Produce the record to the group's retry topic with ``ms_not_before``, then settle this one."""
        if not self._claim():
            return
        due = time.time() + max(0.0, delay)
        headers = {**headers, NOT_BEFORE: f"{due:.6f}"}
        record = Record(self.record.topic, self.record.body, headers, self.record.key)
        try:
            await self._subscription.produce_retry(record)
        except BaseException:
            self._settled = False
            raise
        self._subscription.settle(self)

    async def release(self) -> None:
        """Hand the record out again on a coming fetch (it stays uncommitted meanwhile)."""
        if self._claim():
            self._subscription.requeue(self)


class KafkaSubscription(Subscription):
    """A consumer group member reading a topic and the group's retry topic."""

    def __init__(
        self,
        *,
        topic: str,
        topics: Mapping[str, str],
        retry_topic: str,
        config: dict[str, Any],
        kafka: ModuleType,
        produce: Produce,
        max_held: int,
        commit_interval: float,
        on_close: Callable[[KafkaSubscription], None],
    ) -> None:
        """Configure only; :meth:`open` creates the consumer and joins the group."""
        self.topic = topic
        #: physical topic name -> the logical topic its records are handed out as
        self._topics = dict(topics)
        self._retry_topic = retry_topic
        self._config = config
        self._kafka: Any = kafka
        self._produce = produce
        self._max_held = max_held
        self._commit_interval = commit_interval
        self._on_close = on_close
        self._consumer: Consumer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mainspring-kafka-{topic}")
        self._lock = threading.Lock()
        self._tracks: dict[tuple[str, int], _Track] = {}
        #: Partitions whose commit point moved since the last asynchronous commit.
        self._dirty: set[tuple[str, int]] = set()
        self._generation = 0
        self._ready: deque[KafkaDelivery] = deque()
        self._held: list[tuple[float, int, KafkaDelivery]] = []
        self._seq = itertools.count()
        self._paused = False
        self._flush_scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._last_poll = time.monotonic()

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (Kafka topic, partition) pairs this member owns now (after the last rebalance seen)."""
        with self._lock:
            return sorted(self._tracks)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the consumer and subscribe (the group join happens during the first fetch)."""
        self._loop = asyncio.get_running_loop()

        def create() -> None:
            consumer: Consumer = self._kafka.Consumer({**self._config, "on_commit": self._on_commit})
            consumer.subscribe(
                list(self._topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._consumer = consumer

        await self._loop.run_in_executor(self._executor, create)
        self._keepalive = asyncio.create_task(
            self._keep_polling(), name=f"mainspring-kafka-keepalive-{self.topic}"
        )

    async def close(self) -> None:
        """Commit what is contiguous, leave the group (its partitions move at once), free the thread."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        loop = asyncio.get_running_loop()
        keepalive, self._keepalive = self._keepalive, None
        try:
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
        finally:
            try:
                await loop.run_in_executor(self._executor, self._close_consumer)
            finally:
                self._executor.shutdown(wait=False)

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        # An asynchronous commit can fail unseen (a rebalance going on): commit every point again.
        with self._lock:
            offsets = self._points(self._tracks)
            self._dirty.clear()
        self._commit_sync(consumer, offsets)
        # close() runs the revoke callback (committing the same points again) and sends LeaveGroup.
        consumer.close()

    # --- fetching ----------------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Hand out due records; wait for new ones in the consumer thread (never on the loop)."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            batch = self._take(max_messages)
            if batch:
                return batch
            now = time.monotonic()
            wait = max(0.0, deadline - now)
            with self._lock:
                if self._held:
                    wait = min(wait, max(0.0, self._held[0][0] - now))
            # The thread files what it fetched itself, so a cancelled fetch loses nothing: the
            # records wait in the ready queue for the next call.
            await loop.run_in_executor(self._executor, self._poll, max_messages, wait)
            if time.monotonic() >= deadline:
                return self._take(max_messages)
        return []

    def _take(self, max_messages: int) -> list[Delivery]:
        now = time.monotonic()
        with self._lock:
            while self._held and self._held[0][0] <= now:
                self._ready.append(heapq.heappop(self._held)[2])
            batch: list[Delivery] = []
            while self._ready and len(batch) < max_messages:
                batch.append(self._ready.popleft())
            return batch

    def _poll(self, max_messages: int, wait: float) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        kafka = self._kafka
        try:
            with self._lock:
                over = len(self._held) >= self._max_held
            if over or self._paused:
                assignment = consumer.assignment()
                if over:
                    consumer.pause(assignment)
                else:
                    consumer.resume(assignment)
                self._paused = over
            # One poll() per record, not consume(n): consume waits for all n, and one call could
            # return records from both sides of a rebalance. Rebalance callbacks run inside poll()
            # before it returns, so each record is filed against the assignment it came from.
            message = consumer.poll(wait)
            taken, limit = 0, max(max_messages, POLL_BATCH)
            while message is not None:
                self._accept(message)
                taken += 1
                if taken >= limit:
                    break
                message = consumer.poll(0)
        except kafka.KafkaException as exc:
            raise ServiceUnavailableError(
                f"kafka consumer for {self.topic!r} failed: {exc}", details={"backend": "kafka"}
            ) from exc
        finally:
            self._last_poll = time.monotonic()

    async def _keep_polling(self) -> None:
        """Serve rebalances while nobody fetches, instead of holding up the whole group."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(KEEPALIVE)
            if self._closed or time.monotonic() - self._last_poll < KEEPALIVE:
                continue
            try:
                await loop.run_in_executor(self._executor, self._serve_callbacks)
            except (self._kafka.KafkaException, RuntimeError) as exc:
                # RuntimeError: the consumer was closed meanwhile.
                log.warning("messaging.kafka.keepalive_failed", topic=self.topic, error=str(exc))

    def _serve_callbacks(self) -> None:
        consumer = self._consumer
        if consumer is None or self._closed:
            return
        # Paused, poll() serves the rebalance callbacks without fetching more; the next fetch resumes.
        consumer.pause(consumer.assignment())
        self._paused = True
        message = consumer.poll(0)
        if message is not None:  # fetched before the pause took effect
            self._accept(message)
        consumer.pause(consumer.assignment())  # a rebalance inside poll() may have assigned more
        self._last_poll = time.monotonic()

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            # Partition EOF is off; what remains is informative (librdkafka retries by itself).
            log.warning("messaging.kafka.consume_error", topic=self.topic, error=str(error))
            return
        kafka_topic, partition, offset = message.topic(), message.partition(), message.offset()
        if kafka_topic is None or partition is None or offset is None:
            return
        key = message.key()
        headers = decode_headers(message.headers())
        record = Record(
            self._topics.get(kafka_topic, self.topic),
            message.value() or b"",
            headers,
            key.decode("utf-8", "replace") if key is not None else None,
        )
        due = not_before(headers)
        now, wall = time.monotonic(), time.time()
        with self._lock:
            track = self._tracks.get((kafka_topic, partition))
            if track is None:  # not (or no longer) ours
                return
            track.add(offset)
            delivery = KafkaDelivery(record, self, kafka_topic, partition, offset, track.generation)
            if due is not None and due > wall:
                heapq.heappush(self._held, (now + (due - wall), next(self._seq), delivery))
            else:
                self._ready.append(delivery)

    # --- settling ----------------------------------------------------------------------------------

    def settle(self, delivery: KafkaDelivery) -> None:
        """Record ``delivery`` as done and schedule a commit if its partition's commit point moved."""
        if self._closed:
            return
        tp = (delivery.kafka_topic, delivery.partition)
        with self._lock:
            track = self._tracks.get(tp)
            if track is None or track.generation != delivery.generation:
                return  # revoked meanwhile: the new owner redelivers it
            point = track.settle(delivery.offset)
            if point is None:
                return
            self._dirty.add(tp)
            if self._flush_scheduled or self._loop is None:
                return
            self._flush_scheduled = True
        # The acks of one commit interval share one asynchronous commit.
        self._loop.call_later(self._commit_interval, self._submit_flush)

    def requeue(self, delivery: KafkaDelivery) -> None:
        """Put a released record back at the front of the ready queue (if its partition is still ours)."""
        with self._lock:
            track = self._tracks.get((delivery.kafka_topic, delivery.partition))
            if self._closed or track is None or track.generation != delivery.generation:
                return
            self._ready.appendleft(
                KafkaDelivery(
                    delivery.record,
                    self,
                    delivery.kafka_topic,
                    delivery.partition,
                    delivery.offset,
                    delivery.generation,
                )
            )

    async def produce_retry(self, record: Record) -> None:
        """Produce ``record`` to this group's retry topic and wait for Kafka's confirmation."""
        await self._produce(self._retry_topic, record)

    def _points(self, keys: Iterable[tuple[str, int]]) -> list[TopicPartition]:
        """The commit points of the tracked partitions among ``keys`` (call with the lock held)."""
        offsets = []
        for key in keys:
            track = self._tracks.get(key)
            if track is not None and track.point is not None:
                offsets.append(self._kafka.TopicPartition(key[0], key[1], track.point))
        return offsets

    def _submit_flush(self) -> None:
        if self._closed:
            return  # close() commits every point itself
        try:
            self._executor.submit(self._flush).add_done_callback(self._flush_done)
        except RuntimeError:
            # The executor shut down meanwhile (close() ran): it committed every point.
            return

    def _flush_done(self, future: Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            # Unexpected (commit errors are handled in _flush); the next commit, or the synchronous
            # ones on revoke and close, cover these offsets.
            log.error(
                "messaging.kafka.flush_failed", topic=self.topic, error=f"{type(error).__name__}: {error}"
            )

    def _flush(self) -> None:
        # On the consumer thread, like the rebalance callbacks: a commit queued here cannot follow
        # the revocation of its partition (the callback drops the partition's track first).
        with self._lock:
            self._flush_scheduled = False
            consumer = self._consumer
            if consumer is None or self._closed:
                return
            offsets = self._points(self._dirty)
            self._dirty.clear()
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except self._kafka.KafkaException as exc:
            log.warning("messaging.kafka.commit_failed", topic=self.topic, error=str(exc))

    def _commit_sync(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        if not offsets:
            return
        kafka = self._kafka
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except kafka.KafkaException as exc:
            # Typically the group moved on already (rebalance in progress); the records come again.
            log.warning("messaging.kafka.commit_failed", topic=self.topic, error=str(exc))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Served by poll() in the consumer thread. A failed commit is retried by the next one, and at
        # the latest by the synchronous commits on revoke and close.
        failed = [tp for tp in partitions if tp.error is not None]
        if error is not None or failed:
            log.info(
                "messaging.kafka.commit_failed",
                topic=self.topic,
                error=str(error or failed[0].error),
                partitions=[tp.partition for tp in failed],
            )

    # --- rebalance callbacks (run in the consumer thread, inside consume/close) ---------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._generation += 1
            for tp in partitions:
                self._tracks[(tp.topic, tp.partition)] = _Track(self._generation)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._tracks.pop(key, None)
            self._dirty.discard(key)
        self._ready = deque(d for d in self._ready if (d.kafka_topic, d.partition) not in gone)
        self._held = [item for item in self._held if (item[2].kafka_topic, item[2].partition) not in gone]
        heapq.heapify(self._held)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            offsets = self._points((tp.topic, tp.partition) for tp in partitions)
            self._drop(partitions)
        self._commit_sync(consumer, offsets)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session expired): another member may own them already; committing would be wrong.
        with self._lock:
            self._drop(partitions)
