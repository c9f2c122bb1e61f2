"""The consuming side of the RabbitMQ transport: a subscription fed by a consumer, and its deliveries.

A subscription owns one channel on the transport's consuming connection, with ``basic.qos`` set to the
prefetch, and one consumer whose callback puts each message into an :class:`asyncio.Queue`; ``fetch``
waits on that queue. The channel is robust: after a reconnection aio-pika declares the queue, binds it
and starts the consumer again, and RabbitMQ redelivers what was unacked on the old channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from mainspring.logging import get_logger
from mainspring.messaging._transport import CE_PARTITION_KEY, Delivery, Record, Subscription

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

__all__ = ["AmqpDelivery", "AmqpSubscription", "header_text"]

log = get_logger("mainspring.messaging")


def header_text(value: object) -> str:
    """An AMQP header value as text (``Record`` headers are str -> str)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class AmqpDelivery(Delivery):
    """One message from a group queue; settled on the channel it came from."""

    __slots__ = ("_message", "_subscription")

    def __init__(self, record: Record, message: AbstractIncomingMessage, subscription: AmqpSubscription):
        super().__init__(record)
        self._message = message
        self._subscription = subscription

    async def ack(self) -> None:
        """Acknowledge the message; a no-op (logged) if its channel is gone, as RabbitMQ redelivers it."""
        await self._settle(self._message.ack(), "ack")

    async def release(self) -> None:
        """Nack with requeue: RabbitMQ hands the record out again at once (not counted as an attempt)."""
        await self._settle(self._message.nack(requeue=True), "release")

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Publish the record to the group's TTL queue for ``delay`` (confirmed), then ack this delivery."""
        sub = self._subscription
        record = Record(self.record.topic, self.record.body, dict(headers), self.record.key)
        await sub.schedule(sub.queue, record, delay)
        await self.ack()

    async def _settle(self, action: Awaitable[None], what: str) -> None:
        errors = self._subscription.errors
        try:
            await action
        except (errors.ChannelInvalidStateError, errors.AMQPConnectionError, ConnectionError) as exc:
            # The channel this delivery came on is closed: RabbitMQ has already put the message back
            # and redelivers it (at least once), so there is nothing left to settle.
            log.warning(
                "rabbitmq delivery not settled, its channel is closed; it will be redelivered",
                action=what,
                queue=self._subscription.queue,
                error=repr(exc),
            )


class AmqpSubscription(Subscription):
    """A consumer on one group queue, with prefetch, feeding an :class:`asyncio.Queue`."""

    def __init__(
        self,
        topic: str,
        queue: str,
        *,
        errors: ModuleType,
        timeout: float,
        schedule: Callable[[str, Record, float], Awaitable[None]],
        on_close: Callable[[AmqpSubscription], None],
    ) -> None:
        """Remember the queue; ``schedule(queue, record, delay)`` puts a retry back into the queue later.

        ``errors`` is ``aiormq.exceptions``; ``timeout`` bounds the consumer start and cancel;
        ``on_close`` is called once by :meth:`close`.
        """
        self.topic = topic
        self.queue = queue
        self.errors = errors
        self.schedule = schedule
        self._timeout = timeout
        self._on_close = on_close
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractRobustChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._closed = False

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)

    async def attach(self, channel: AbstractRobustChannel, amqp_queue: AbstractQueue) -> None:
        """Start consuming ``amqp_queue`` on ``channel`` (which this subscription then owns)."""
        self._channel = channel
        self._amqp_queue = amqp_queue
        self._consumer_tag = await amqp_queue.consume(self._on_message, timeout=self._timeout)

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Wait up to ``timeout`` seconds for a first message, then take what else is buffered."""
        if self._closed:
            return []
        messages: list[AbstractIncomingMessage] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while not messages:
            try:
                if self._buffer.empty():
                    first = await asyncio.wait_for(self._buffer.get(), max(0.0, deadline - loop.time()))
                else:
                    first = self._buffer.get_nowait()
            except TimeoutError:
                return []
            messages.extend(self._live([first]))
            while len(messages) < max_messages and not self._buffer.empty():
                messages.extend(self._live([self._buffer.get_nowait()]))
        return [AmqpDelivery(self._record(m), m, self) for m in messages]

    def _live(self, messages: list[AbstractIncomingMessage]) -> list[AbstractIncomingMessage]:
        # Messages from a channel that has closed since (connection loss) are already back in the queue
        # and come again on the restored channel; handing them out would only make duplicates.
        live = []
        for message in messages:
            try:
                if not message.channel.is_closed:
                    live.append(message)
            except self.errors.ChannelInvalidStateError:  # aio-pika's way of saying "closed"
                continue
        return live

    def _record(self, message: AbstractIncomingMessage) -> Record:
        headers = {str(k): header_text(v) for k, v in (message.headers or {}).items() if v is not None}
        return Record(self.topic, message.body, headers, headers.get(CE_PARTITION_KEY))

    async def close(self) -> None:
        """Cancel the consumer and close its channel; unacked messages go back to the queue."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        channel, self._channel = self._channel, None
        if channel is None or channel.is_closed:
            return
        errors = self.errors
        failures = (errors.AMQPError, errors.ChannelInvalidStateError, ConnectionError, TimeoutError)
        try:
            if self._amqp_queue is not None and self._consumer_tag is not None:
                await self._amqp_queue.cancel(self._consumer_tag, timeout=self._timeout)
        except failures as exc:
            log.info("rabbitmq consumer cancel failed", queue=self.queue, error=repr(exc))
        try:
            await channel.close()
        except failures as exc:  # the connection is gone: RabbitMQ has requeued everything already
            log.info("rabbitmq consumer channel close failed", queue=self.queue, error=repr(exc))
