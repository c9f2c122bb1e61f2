"""The consuming side of :class:`~mainspring.messaging.redis.RedisTransport`: subscription and delivery.

See :mod:`mainspring.messaging.redis` for what each operation does in Redis.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mainspring.errors import BadRequestError, MainspringError
from mainspring.logging import get_logger
from mainspring.messaging._redis_streams import (
    ADD_DELAYED_SCRIPT,
    DROP_CONSUMER_SCRIPT,
    delayed_member,
    entry_fields,
    entry_record,
)
from mainspring.messaging._transport import Delivery, Record, Subscription

if TYPE_CHECKING:
    from mainspring.messaging.redis import RedisTransport

__all__ = ["RedisDelivery", "RedisSubscription", "backoff", "check_topic"]

log = get_logger("mainspring.messaging")

_PAGE = 100  # own pending entries read per call when recovering
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 2.0


def backoff(attempt: int) -> float:
    """Return the pause before retry number ``attempt`` (0-based): exponential, capped, jittered."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** min(attempt, 16))
    return random.uniform(ceiling / 2, ceiling)


def check_topic(topic: object) -> None:
    """Raise ``BadRequestError`` unless ``topic`` is a non-empty string."""
    if not isinstance(topic, str) or not topic:
        raise BadRequestError(f"a topic must be a non-empty string, got {topic!r}")


class RedisDelivery(Delivery):
    """One stream entry handed to the broker; settled through its subscription."""

    __slots__ = ("entry_id", "settled", "stream", "subscription")

    def __init__(self, subscription: RedisSubscription, stream: str, entry_id: bytes, record: Record) -> None:
        super().__init__(record)
        self.subscription = subscription
        self.stream = stream
        self.entry_id = entry_id
        self.settled = False

    async def ack(self) -> None:
        """``XACK`` the entry (and ``XDEL`` it from a retry stream)."""
        await self.subscription.settle(self, None)

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Schedule the record with ``headers`` for the group after ``delay`` seconds, acking this entry."""
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < math.inf:
            raise BadRequestError(f"retry delay must be a finite number of seconds >= 0, got {delay!r}")
        await self.subscription.settle(self, (float(delay), dict(headers)))

    async def release(self) -> None:
        """Put the record back, unchanged, on the group's retry stream, acking this entry."""
        await self.subscription.settle(self, (0.0, None))


class _AckBatch:
    """Entry ids acked together, by stream, and the future their callers wait on."""

    __slots__ = ("done", "group", "ids", "retry_stream")

    def __init__(self, done: asyncio.Future[None], group: str, retry_stream: str) -> None:
        self.done = done
        # A waiter cancelled meanwhile would leave a failure unretrieved: mark it seen.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.group, self.retry_stream = group, retry_stream
        self.ids: dict[str, list[bytes]] = {}

    async def command(self, client: Any) -> Any:
        """``XACK`` the ids of each stream (and ``XDEL`` those of the group's retry stream)."""
        if len(self.ids) == 1 and self.retry_stream not in self.ids:  # the usual case: one command
            ((stream, ids),) = self.ids.items()
            return await client.xack(stream, self.group, *ids)
        async with client.pipeline(transaction=False) as pipe:
            for stream, ids in self.ids.items():
                pipe.xack(stream, self.group, *ids)
                if stream == self.retry_stream:  # only this group reads it: drop what is done
                    pipe.xdel(stream, *ids)
            return await pipe.execute()


class RedisSubscription(Subscription):
    """One consumer of a group, reading the topic stream and the group's retry stream."""

    batch_acks = True  # an XACK is a round trip; one XACK acks many

    def __init__(
        self, transport: RedisTransport, topic: str, group: str, consumer: str, prefetch: int
    ) -> None:
        self.transport, self.topic, self.group, self.consumer = transport, topic, group, consumer
        self.prefetch = prefetch
        keys = transport.keys(topic)
        self.stream, self.retry_stream = keys.stream, keys.retry(group)
        self._move_keys = (keys.delayed, keys.stream, keys.retry_delayed(group), self.retry_stream)
        self._inflight: set[tuple[str, bytes]] = set()
        self._buffer: deque[RedisDelivery] = deque()
        # Entries settled while a read that may return our own pending entries was under way.
        self._settled_meanwhile: set[tuple[str, bytes]] | None = None
        self._recover = True  # a new consumer may be an old name with pending entries
        self._cursors = {self.stream: b"0-0", self.retry_stream: b"0-0"}
        self._next_move = self._next_claim = 0.0
        self._failures = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._acks: _AckBatch | None = None  # acks gathering for the next XACK
        self._ack_flusher: asyncio.Task[None] | None = None

    async def declare(self, client: Any) -> None:
        """Create the group on both streams from id 0 (an existing group is kept)."""
        for stream in (self.stream, self.retry_stream):
            try:
                await client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except self.transport.response_error as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    # --- fetch --------------------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Return up to ``max_messages`` deliveries, blocking in Redis up to ``timeout`` seconds."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise BadRequestError(f"max_messages must be an integer >= 1, got {max_messages!r}")
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:  # wait like an idle fetch, so a caller's loop does not spin
            await asyncio.sleep(max(0.0, timeout))
            return []
        async with self._lock:
            while not self._closed:
                if self._buffer:
                    break
                try:
                    await self._poll(max_messages, deadline)
                except self.transport.transient as exc:
                    self._recover = True  # entries sent on a dropped connection are pending for us
                    if self._failures == 0:
                        log.warning(
                            "redis connection lost while consuming; reconnecting",
                            transport=self.transport.url,
                            topic=self.topic,
                            group=self.group,
                            error=repr(exc),
                        )
                    pause = min(backoff(self._failures), deadline - time.monotonic())
                    self._failures += 1
                    if pause <= 0:
                        break
                    await asyncio.sleep(pause)
                    continue
                except self.transport.response_error as exc:
                    if not str(exc).startswith("NOGROUP"):
                        raise self.transport.refused("fetch", exc) from exc
                    # The stream was deleted (FLUSHDB, DEL): declare the group again.
                    await self.transport.call("subscribe", self.declare)
                    continue
                if self._failures:
                    log.info("redis consumer reconnected", transport=self.transport.url, topic=self.topic)
                    self._failures = 0
                if self._buffer or time.monotonic() >= deadline:
                    break
            return [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]

    async def _poll(self, count: int, deadline: float) -> None:
        client = self.transport.client_for("fetch")
        timeout = self.transport.timeout
        if self._recover:
            async with asyncio.timeout(timeout):
                await self._read_own_pending(client)
            self._recover = False
        now = time.monotonic()
        if now >= self._next_move:
            async with asyncio.timeout(timeout):
                waits = await self.transport.move_due(self._move_keys, client)
            due = min((w / 1_000_000 for w in waits if w >= 0), default=math.inf)
            self._next_move = time.monotonic() + min(self.transport.block, due)
        if now >= self._next_claim:
            async with asyncio.timeout(timeout):
                await self._claim(client, count)
            self._next_claim = time.monotonic() + self.transport.claim_idle / 2
        if self._buffer:
            return
        wait = min(deadline, self._next_move, self._next_claim) - time.monotonic()
        block = min(wait, self.transport.block)
        block_ms = math.ceil(block * 1000) if block > 0 else None
        streams = {self.stream: ">", self.retry_stream: ">"}
        # If this read is cut (timeout, cancel, dropped connection) after Redis sent entries, they are
        # pending for us: the next poll re-reads them.
        self._recover = True
        async with asyncio.timeout(timeout + (block_ms or 0) / 1000):
            reply = await client.xreadgroup(self.group, self.consumer, streams, count=count, block=block_ms)
        self._recover = False
        await self._take(client, reply or [])

    async def _read_own_pending(self, client: Any) -> None:
        self._settled_meanwhile = set()
        try:
            for stream in (self.stream, self.retry_stream):
                after = b"0"
                while True:
                    reply = await client.xreadgroup(self.group, self.consumer, {stream: after}, count=_PAGE)
                    entries = reply[0][1] if reply else []
                    await self._take(client, [[stream, entries]])
                    if len(entries) < _PAGE:
                        break
                    after = entries[-1][0]
        finally:
            self._settled_meanwhile = None

    async def _claim(self, client: Any, count: int) -> None:
        idle_ms = math.ceil(self.transport.claim_idle * 1000)
        self._settled_meanwhile = set()
        try:
            for stream in (self.stream, self.retry_stream):
                reply = await client.xautoclaim(
                    stream, self.group, self.consumer, idle_ms, self._cursors[stream], count=count
                )
                # Redis >= 7 also returns the ids of deleted entries, which it drops from the group.
                self._cursors[stream] = reply[0]
                await self._take(client, [[stream, reply[1]]])
        finally:
            self._settled_meanwhile = None

    async def _take(self, client: Any, reply: Iterable[Any]) -> None:
        """Buffer the entries of an ``XREADGROUP``-shaped reply that are not already handed out."""
        skip = self._inflight | (self._settled_meanwhile or set())
        for raw_stream, entries in reply:
            stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
            gone = []
            for entry_id, fields in entries:
                if (stream, entry_id) in skip:
                    continue
                if not fields:  # trimmed or purged while pending: nothing left to deliver
                    gone.append(entry_id)
                    continue
                self._inflight.add((stream, entry_id))
                self._buffer.append(RedisDelivery(self, stream, entry_id, entry_record(self.topic, fields)))
            if gone:
                await client.xack(stream, self.group, *gone)

    # --- settle -------------------------------------------------------------------------------------

    async def settle(
        self,
        delivery: RedisDelivery,
        again: tuple[float, dict[str, str] | None] | None,
        *,
        patience: float | None = None,
    ) -> None:
        """Ack ``delivery``; with ``again`` = (delay, headers), first put it back for the group.

        Waits through an outage for ``patience`` seconds (default ``publish_timeout``).
        """
        if delivery.settled:  # the broker settles once; a second call changes nothing
            return
        delivery.settled = True
        stream, entry_id = delivery.stream, delivery.entry_id
        if again is None and patience is None:
            await self._ack(stream, entry_id)
            return
        fields = entry_fields(delivery.record, None if again is None else again[1])
        delay = 0.0 if again is None else again[0]
        member = delayed_member(fields) if delay > 0 else b""
        delay_us = str(math.ceil(delay * 1_000_000))

        async def run(client: Any) -> Any:
            async with client.pipeline(transaction=True) as pipe:
                if member:
                    pipe.eval(ADD_DELAYED_SCRIPT, 1, self._move_keys[2], delay_us, member)
                elif again is not None:
                    pipe.xadd(self.retry_stream, fields)
                pipe.xack(stream, self.group, entry_id)
                if stream == self.retry_stream:  # only this group reads it: drop what is done
                    pipe.xdel(stream, entry_id)
                return await pipe.execute()

        what = "ack" if again is None else "release" if again[1] is None else "retry"
        try:
            await self.transport.call(what, run, patience=patience)
        except MainspringError:
            self._recover = True  # still pending for us: the next fetch hands it out again
            raise
        finally:
            self._done_with(stream, entry_id)
        if member:  # look for it when it is due, not only at the next periodic move
            self._next_move = min(self._next_move, time.monotonic() + delay)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> list[Exception | None]:
        """Ack ``deliveries`` in the next ``XACK`` (see :meth:`_ack`); one outcome for them all."""
        for delivery in deliveries:
            if not isinstance(delivery, RedisDelivery) or delivery.subscription is not self:
                raise BadRequestError(f"{delivery!r} is not a delivery of this subscription")
        batch = None
        for delivery in deliveries:
            assert isinstance(delivery, RedisDelivery)  # checked above
            if not delivery.settled:  # the broker settles once; a second call changes nothing
                delivery.settled = True
                batch = self._add_ack(delivery.stream, delivery.entry_id)
        if batch is not None:
            try:
                await asyncio.shield(batch.done)
            except MainspringError as exc:
                return [exc] * len(deliveries)
        return [None] * len(deliveries)

    def _done_with(self, stream: str, entry_id: bytes) -> None:
        self._inflight.discard((stream, entry_id))
        if self._settled_meanwhile is not None:
            self._settled_meanwhile.add((stream, entry_id))

    async def _ack(self, stream: str, entry_id: bytes) -> None:
        """Ack one entry together with every other ack asked for while the previous ``XACK`` ran.

        One flusher task at a time sends what has gathered (one ``XACK`` per stream, plus the
        ``XDEL`` of retry-stream entries) and then what gathered meanwhile; each caller waits for the
        reply that covers its entry, so an ack still returns only once Redis has it.
        """
        # Shielded: a caller cancelled while waiting must not cancel the reply the others wait for.
        await asyncio.shield(self._add_ack(stream, entry_id).done)

    def _add_ack(self, stream: str, entry_id: bytes) -> _AckBatch:
        batch = self._acks
        if batch is None:
            batch = self._acks = _AckBatch(
                asyncio.get_running_loop().create_future(), self.group, self.retry_stream
            )
        batch.ids.setdefault(stream, []).append(entry_id)
        if self._ack_flusher is None:
            self._ack_flusher = asyncio.create_task(
                self._flush_acks(), name=f"mainspring-redis-ack-{self.topic}-{self.group}"
            )
        return batch

    async def _flush_acks(self) -> None:
        try:
            while (batch := self._acks) is not None:
                self._acks = None
                try:
                    await self.transport.call("ack", batch.command)
                except Exception as exc:  # noqa: BLE001 - handed to every caller waiting for this batch
                    self._recover = True  # still pending for us: the next fetch hands them out again
                    batch.done.set_exception(exc)
                except BaseException:
                    batch.done.cancel()
                    raise
                else:
                    batch.done.set_result(None)
                finally:
                    for stream, ids in batch.ids.items():
                        for entry_id in ids:
                            self._done_with(stream, entry_id)
        finally:
            self._ack_flusher = None
            if (left := self._acks) is not None:  # cancelled with acks gathered: they stay pending
                self._acks = None
                self._recover = True
                left.done.cancel()
                for stream, ids in left.ids.items():
                    for entry_id in ids:
                        self._done_with(stream, entry_id)

    async def _wait_for_acks(self) -> None:
        """Wait until every ack asked for so far has its reply (or failed)."""
        while (flusher := self._ack_flusher) is not None:
            await asyncio.wait([flusher])

    # --- close --------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop consuming: put buffered entries back, and leave the group if nothing is pending.

        Acks already asked for are waited for first (through an outage, as any ack). Then one attempt
        each, without waiting through an outage: what stays pending is claimed by another consumer
        after ``claim_idle``.
        """
        if self._closed:
            return
        self._closed = True
        self.transport.forget(self)
        await self._wait_for_acks()
        try:
            if self._recover:  # a cut read may have left entries pending for us: give them back too
                async with asyncio.timeout(self.transport.timeout):
                    await self._read_own_pending(self.transport.client_for("close"))
            while self._buffer:
                await self.settle(self._buffer.popleft(), (0.0, None), patience=0)
            keys = (self.stream, self.retry_stream)

            async def leave(client: Any) -> Any:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.eval(DROP_CONSUMER_SCRIPT, 1, key, self.group, self.consumer)
                    return await pipe.execute()

            await self.transport.call("close", leave, patience=0)
        except self.transport.close_errors as exc:
            # What stays pending for this consumer is claimed by another after claim_idle.
            log.warning(
                "redis subscription closed without cleanup",
                transport=self.transport.url,
                topic=self.topic,
                group=self.group,
                error=repr(exc),
            )
