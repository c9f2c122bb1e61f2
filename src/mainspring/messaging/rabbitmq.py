"""The RabbitMQ transport (``amqp://``, ``amqps://``; extra ``rabbitmq``) on aio-pika.

Topology (with the ``prefix`` option every name below gets ``<prefix>.`` in front):

* one durable topic exchange (option ``exchange``, default ``mainspring``); the routing key is the topic;
* one durable queue per (topic, group), ``<topic>.<group>``, bound with the topic as binding key; its
  type is the ``queue_type`` option (``classic`` or ``quorum``);
* ``<topic>.dlq``: the dead-letter storage, a durable queue bound with routing key ``<topic>.dlq``,
  declared when a group subscribes to ``<topic>`` or a record is published to ``<topic>.dlq``, so dead
  letters are kept with no consumer; :meth:`RabbitMQTransport.browse` and ``purge`` work on it;
* ``<topic>.<group>.retry.<ms>``: per-delay queues with ``x-message-ttl`` that dead-letter through the
  default exchange back to the group's queue (:meth:`Delivery.retry` reaches that group only);
* ``<topic>.delay.<ms>``: the same for ``publish(..., delay=...)``, dead-lettering to the exchange with
  the topic as routing key (so every group gets the record when it is due).

Delays are rounded *up* to the ``delay_tiers`` (seconds), so the number of TTL queues stays small even
with jittered back-off; a delay beyond the last tier is rounded up to whole seconds. The TTL queues are
declared on first use and remembered.

Publishing uses publisher confirms and ``mandatory``: :meth:`RabbitMQTransport.publish` returns once
every record is confirmed. A record that no queue is bound for (no group has subscribed to its topic
yet) is returned by RabbitMQ; the transport then raises :class:`ServiceUnavailableError` with code
``messaging_unroutable`` (an outbox relay retries later) rather than losing it. Connection loss is
handled by aio-pika's robust connection (with a capped, jittered back-off between attempts; then the
channels, queues, bindings and consumers are restored); a publish waits for it up to
``publish_timeout`` seconds and then raises :class:`ServiceUnavailableError`. Deliveries handed out
before a connection loss are redelivered by RabbitMQ; settling one of them afterwards is a no-op.

Known limits:

* A group exists from its first :meth:`~RabbitMQTransport.subscribe`: records published earlier are not
  kept for it (there is no topic log on RabbitMQ; the publish fails as unroutable when no group exists).
* A delayed publish is routed when it is due: if no group queue is bound for its topic by then,
  RabbitMQ drops it (routability is not checked at publish time).
* :meth:`~RabbitMQTransport.browse` reads with ``basic.get`` and gives the records back (nack with
  requeue): they are marked redelivered, count as a delivery on quorum queues, and records currently
  handed to a consumer are not seen. ``purge`` removes only records that are not handed out.
  Only ``.dlq`` topics have a queue of their own: browse/purge of another topic is a ``ConfigError``.
* In a batch with an unroutable record the routable ones are stored; the error names the topics.
  A publish retried after a connection loss whose confirm was lost may store a record twice.
* ``<topic>.<group>`` names can be ambiguous for topics and groups containing dots; the group name
  ``dlq`` is refused because ``<topic>.dlq`` is the dead-letter queue.
* With ``queue_type="quorum"`` the TTL queues dead-letter ``at-least-once`` (``x-overflow:
  reject-publish``, RabbitMQ 3.10+).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.errors import BadRequestError, ConfigError, ConfigProblem, ServiceUnavailableError
from mainspring.logging import get_logger
from mainspring.messaging._rabbitmq_consumer import AmqpSubscription, header_text
from mainspring.messaging._transport import (
    CE_PARTITION_KEY,
    DLQ_SUFFIX,
    Record,
    Subscription,
    Transport,
)

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractRobustChannel,
        AbstractRobustConnection,
    )
    from aiormq.abc import AbstractChannel

__all__ = ["DEFAULT_DELAY_TIERS", "RabbitMQTransport"]

log = get_logger("mainspring.messaging")

#: Delay tiers in seconds: a retry or delayed publish waits for the first tier >= its delay.
DEFAULT_DELAY_TIERS: tuple[float, ...] = (
    0.1, 0.2, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600,
    900, 1200, 1800, 2700, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
_MAX_NAME = 255  # AMQP short string: queue names and routing keys
_UNROUTABLE = "messaging_unroutable"


def _is_seconds(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class RabbitMQTransport(Transport):
    """Records over RabbitMQ: a topic exchange, a queue per (topic, group), TTL queues for delays."""

    schemes = ("amqp", "amqps")
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "exchange",
            "prefix",
            "queue_type",
            "publish_timeout",
            "connect_timeout",
            "reconnect_interval",
            "max_reconnect_interval",
            "delay_tiers",
            "connection_name",
        }
    )

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "mainspring",
        prefix: str = "",
        queue_type: Literal["classic", "quorum"] = "classic",
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 0.5,
        max_reconnect_interval: float = 30.0,
        delay_tiers: Sequence[float] = DEFAULT_DELAY_TIERS,
        connection_name: str = "mainspring",
    ) -> None:
        """Check and remember the configuration (``ConfigError`` lists every problem); :meth:`start` connects.

        ``exchange`` names the topic exchange; ``prefix`` goes in front of every exchange and queue
        name (``<prefix>.``) to share a vhost; ``queue_type`` is ``classic`` (durable) or ``quorum``
        (replicated) for every queue declared. ``publish_timeout`` bounds a publish including the wait
        for a reconnection, and every declaration, browse and purge; ``connect_timeout`` bounds the
        first connection in :meth:`start`. After a connection loss the pause between attempts starts
        at ``reconnect_interval`` and grows with the outage up to ``max_reconnect_interval``
        (jittered). ``delay_tiers`` are the delays (seconds) that retries and delayed publishes are
        rounded up to; ``connection_name`` is shown by RabbitMQ (``<name>:publish``/``:consume``).
        """
        problems: list[ConfigProblem] = []
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in self.schemes or not parts.hostname:
            problems.append(
                ConfigProblem(
                    "url",
                    "must be amqp://user:password@host:port/vhost (or amqps://)",
                    mask_url_password(str(url)),
                )
            )
        for field, value in (
            ("publish_timeout", publish_timeout),
            ("connect_timeout", connect_timeout),
            ("reconnect_interval", reconnect_interval),
            ("max_reconnect_interval", max_reconnect_interval),
        ):
            if not _is_seconds(value) or not value > 0:
                problems.append(ConfigProblem(field, "must be a number of seconds > 0", repr(value)))
        if not isinstance(exchange, str) or not exchange or exchange.startswith("amq."):
            problems.append(
                ConfigProblem("exchange", "must be a non-empty name not starting with 'amq.'", repr(exchange))
            )
        if not isinstance(prefix, str) or any(c in prefix for c in "*#"):
            problems.append(ConfigProblem("prefix", "must be a string without '*' or '#'", repr(prefix)))
        if queue_type not in ("classic", "quorum"):
            problems.append(ConfigProblem("queue_type", "must be 'classic' or 'quorum'", repr(queue_type)))
        if not isinstance(connection_name, str):
            problems.append(ConfigProblem("connection_name", "must be a string", repr(connection_name)))
        tiers: tuple[float, ...] = ()
        if isinstance(delay_tiers, str | bytes) or not isinstance(delay_tiers, Sequence):
            problems.append(ConfigProblem("delay_tiers", "must be a sequence of seconds", repr(delay_tiers)))
        elif not delay_tiers or not all(_is_seconds(t) and t > 0 for t in delay_tiers):
            problems.append(
                ConfigProblem("delay_tiers", "must be non-empty, each > 0 seconds", repr(delay_tiers))
            )
        else:
            tiers = tuple(sorted({float(t) for t in delay_tiers}))
        if problems:
            raise ConfigError("invalid options for the RabbitMQ transport", problems=problems)
        # Import now: a missing extra is a configuration error best reported while assembling the service.
        self._aio_pika = require("aio_pika", extra="rabbitmq", feature="the RabbitMQ transport")
        self._errors = require("aiormq.exceptions", extra="rabbitmq", feature="the RabbitMQ transport")
        self._url = url
        self._prefix = f"{prefix}." if prefix else ""
        self._exchange = self._prefix + exchange
        self._queue_type = queue_type
        self._timeout = float(publish_timeout)
        self._connect_timeout = float(connect_timeout)
        self._reconnect_interval = float(reconnect_interval)
        self._max_reconnect_interval = max(float(max_reconnect_interval), self._reconnect_interval)
        self._tiers = tiers
        self._connection_name = connection_name
        self._publish_connection: AbstractRobustConnection | None = None
        self._consume_connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._subscriptions: set[AmqpSubscription] = set()
        self._declared: set[str] = set()
        # What a dropped connection raises (aio-pika itself counts RuntimeError among them: "closed").
        self._connection_errors: tuple[type[BaseException], ...] = (
            self._errors.AMQPConnectionError,
            self._errors.ChannelInvalidStateError,
            ConnectionError,
            RuntimeError,
        )

    @property
    def url(self) -> str:
        """The AMQP URL with its password masked."""
        return mask_url_password(self._url)

    @property
    def exchange(self) -> str:
        """The name of the topic exchange (prefix included)."""
        return self._exchange

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the publishing and the consuming connection and declare the exchange."""
        if self._publish_connection is not None:
            return
        aio_pika = self._aio_pika
        try:
            self._publish_connection = await self._connect("publish")
            self._consume_connection = await self._connect("consume")
            self._publish_channel = await self._publish_connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._publish_channel.declare_exchange(
                self._exchange, aio_pika.ExchangeType.TOPIC, durable=True, timeout=self._timeout
            )
        except BaseException:
            await self.stop()
            raise

    async def _connect(self, role: str) -> AbstractRobustConnection:
        from mainspring.messaging._rabbitmq_connection import BackoffRobustConnection  # needs the extra

        errors = self._errors
        try:
            # The outer bound only backs up aiormq's own connect timeout, which fires first.
            connection: AbstractRobustConnection = await asyncio.wait_for(
                self._aio_pika.connect_robust(
                    self._url,
                    timeout=self._connect_timeout,
                    connection_class=BackoffRobustConnection,
                    reconnect_interval=self._reconnect_interval,
                    max_reconnect_interval=self._max_reconnect_interval,
                    client_properties={"connection_name": f"{self._connection_name}:{role}"},
                ),
                self._connect_timeout + 1.0,
            )
        except errors.ProbableAuthenticationError as exc:
            raise ConfigError(f"RabbitMQ at {self.url} refused the credentials: {exc}") from None
        except (errors.AMQPError, ConnectionError, OSError, TimeoutError) as exc:
            raise ServiceUnavailableError(
                f"cannot connect to RabbitMQ at {self.url} within {self._connect_timeout} s: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return connection

    async def stop(self) -> None:
        """Close every subscription, then both connections; safe to call more than once."""
        for sub in list(self._subscriptions):
            await sub.close()
        connections = (self._publish_connection, self._consume_connection)
        self._publish_connection = self._consume_connection = self._publish_channel = None
        self._declared.clear()
        for connection in connections:
            if connection is not None and not connection.is_closed:
                await connection.close()

    def _channel(self) -> AbstractRobustChannel:
        if self._publish_channel is None:
            raise ServiceUnavailableError("the RabbitMQ transport is not started; call start() first")
        return self._publish_channel

    @asynccontextmanager
    async def _one_shot_channel(self) -> AsyncIterator[AbstractChannel]:
        """A plain (not robust) channel on the publishing connection, for declarations, gets, purges.

        Not restored after a reconnection, so a refused declaration (which closes the channel) does
        not disturb the publishing channel or trigger aio-pika's channel recovery.
        """
        self._channel()
        connection = self._publish_connection
        assert connection is not None  # _channel() checked that we are started
        await connection.ready()  # waits for a reconnection; callers bound it by a timeout
        transport = connection.transport
        if transport is None:
            raise ServiceUnavailableError(f"the connection to RabbitMQ at {self.url} is down")
        channel = await transport.connection.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Bound an operation by ``publish_timeout``; a timeout or a dropped connection is unavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError:
            raise ServiceUnavailableError(
                f"RabbitMQ at {self.url} did not {what} within {self._timeout} s"
            ) from None
        except self._connection_errors as exc:
            raise ServiceUnavailableError(
                f"the connection to RabbitMQ at {self.url} failed while trying to {what}: {exc!r}"
            ) from exc

    # --- names ---------------------------------------------------------------------------------

    def _check_topic(self, topic: str) -> None:
        if not isinstance(topic, str) or not topic or "*" in topic or "#" in topic:
            raise ConfigError(
                f"invalid topic {topic!r} for RabbitMQ: it must be a non-empty string without '*' or '#' "
                "(they are wildcards in topic exchange bindings)"
            )
        # The longest derived name: <ns>.<topic>.dlq / .delay.<ms>; groups are checked on subscribe.
        if len((self._prefix + topic + ".delay.000000000").encode()) > _MAX_NAME:
            raise ConfigError(f"topic {topic[:40]!r}... is too long for RabbitMQ names (255 bytes)")

    def _queue_arguments(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        arguments: dict[str, Any] = dict(extra or {})
        if self._queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            if "x-dead-letter-exchange" in arguments:
                # Quorum queues dead-letter at most once by default; at-least-once needs reject-publish.
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        return arguments

    def _delay_ms(self, delay: float) -> int:
        for tier in self._tiers:
            if tier >= delay:
                return math.ceil(tier * 1000)
        return math.ceil(delay) * 1000

    # --- declarations --------------------------------------------------------------------------

    async def _declare(
        self, name: str, *, routing_key: str | None = None, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """Declare durable queue ``name`` (once per transport), bound to the exchange by ``routing_key``."""
        if name in self._declared:
            return
        errors = self._errors
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline), self._one_shot_channel() as underlay:
                    arguments = self._queue_arguments(arguments)
                    await underlay.queue_declare(name, durable=True, arguments=arguments)
                    if routing_key is not None:
                        await underlay.queue_bind(name, self._exchange, routing_key=routing_key)
                break
            except errors.ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"RabbitMQ queue {name!r} exists with other arguments than this transport declares "
                    f"(queue_type={self._queue_type!r}): {exc}; delete the queue or change the options"
                ) from None
            except TimeoutError:
                raise ServiceUnavailableError(
                    f"RabbitMQ at {self.url} did not declare queue {name!r} within {self._timeout} s"
                ) from None
            except self._connection_errors as exc:
                # The connection dropped under us: the robust connection is coming back, try again.
                log.info("rabbitmq declaration failed; retrying", queue=name, error=repr(exc))
                await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        self._declared.add(name)

    async def _declare_storage(self, topic: str) -> str:
        """Declare the queue that keeps every record of ``topic`` (used for ``<topic>.dlq``)."""
        name = self._prefix + topic
        await self._declare(name, routing_key=topic)
        return name

    # --- publishing ----------------------------------------------------------------------------

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Publish ``records`` in order with confirms (persistent); ``delay`` goes through TTL queues."""
        if delay is not None and not _is_seconds(delay):
            raise BadRequestError(f"publish delay must be a finite number of seconds, got {delay!r}")
        if not records:
            return
        for record in records:
            self._check_topic(record.topic)
        for topic in dict.fromkeys(r.topic for r in records if r.topic.endswith(DLQ_SUFFIX)):
            await self._declare_storage(topic)
        if delay is None or delay <= 0:
            await self._send([(self._exchange, r.topic, r) for r in records])
            return
        ms = self._delay_ms(delay)
        targets: dict[str, str] = {}
        for topic in dict.fromkeys(r.topic for r in records):
            name = f"{self._prefix}{topic}.delay.{ms}"
            await self._declare(
                name,
                arguments={
                    "x-message-ttl": ms,
                    "x-dead-letter-exchange": self._exchange,
                    "x-dead-letter-routing-key": topic,
                },
            )
            targets[topic] = name
        await self._send([("", targets[r.topic], r) for r in records])

    async def _publish_to_queue(self, queue: str, record: Record, delay: float) -> None:
        """Put ``record`` into group queue ``queue`` after ``delay`` seconds (the retry path)."""
        if delay <= 0:
            await self._send([("", queue, record)])
            return
        ms = self._delay_ms(delay)
        name = f"{queue}.retry.{ms}"
        await self._declare(
            name,
            arguments={"x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue},
        )
        await self._send([("", name, record)])

    async def _send(self, items: list[tuple[str, str, Record]]) -> None:
        """Publish (exchange, routing key, record) items in order and wait for every confirm.

        Items that fail for a connection reason are sent again (in order) after the robust connection
        is back, until ``publish_timeout``; a confirm lost in the outage may so make a duplicate.
        """
        aio_pika, errors = self._aio_pika, self._errors
        transient = (
            errors.AMQPConnectionError,
            errors.ChannelInvalidStateError,
            errors.DeliveryError,  # a broker nack: RabbitMQ could not store it, try again
            ConnectionError,
            OSError,
        )
        channel = self._channel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        pending = items
        last_error: BaseException | None = None
        while pending:
            tasks: list[asyncio.Task[Any]] = []
            try:
                async with asyncio.timeout_at(deadline):
                    underlay: AbstractChannel = await channel.get_underlay_channel()
                    for exchange, routing_key, record in pending:
                        headers: dict[str, Any] = dict(record.headers)
                        if record.key is not None:
                            headers.setdefault(CE_PARTITION_KEY, record.key)
                        properties = aio_pika.Message(
                            record.body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ).properties
                        # Tasks start in creation order and queue on the channel lock in that order,
                        # so the frames go out in the order of ``records``.
                        tasks.append(
                            asyncio.create_task(
                                underlay.basic_publish(
                                    record.body,
                                    exchange=exchange,
                                    routing_key=routing_key,
                                    properties=properties,
                                    mandatory=True,
                                )
                            )
                        )
                    results = await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                cause = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
                raise ServiceUnavailableError(
                    f"RabbitMQ at {self.url} did not confirm {len(pending)} record(s) within "
                    f"{self._timeout} s{cause}",
                    details={"unconfirmed": len(pending)},
                ) from None
            failed: list[tuple[str, str, Record]] = []
            unroutable: list[str] = []
            for item, result in zip(pending, results, strict=True):
                if isinstance(result, errors.PublishError):
                    unroutable.append(item[2].topic)
                elif isinstance(result, transient):
                    failed.append(item)
                    last_error = result
                elif isinstance(result, errors.AMQPError):
                    # A channel-level refusal (access, a deleted exchange): not going to heal by waiting.
                    raise ServiceUnavailableError(
                        f"RabbitMQ at {self.url} refused a publish to {item[0] or item[1]!r}: {result}"
                    ) from result
                elif isinstance(result, BaseException):
                    raise result
            if unroutable:
                topics = sorted(set(unroutable))
                raise ServiceUnavailableError(
                    f"RabbitMQ could not route {len(unroutable)} record(s) for topic(s) {topics}: no queue "
                    f"is bound on exchange {self._exchange!r} (no consumer group has subscribed yet); the "
                    "records were not stored, publish them again once a group exists",
                    code=_UNROUTABLE,
                    details={"topics": topics, "exchange": self._exchange},
                )
            if failed:
                log.info("rabbitmq publishes failed; retrying", count=len(failed), error=repr(last_error))
                await asyncio.sleep(min(self._reconnect_interval, max(0.0, deadline - loop.time())) / 2)
            pending = failed

    # --- consuming -----------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> Subscription:
        """Declare ``<topic>.<group>`` (bound to ``topic``) and ``<topic>.dlq``, then consume the queue."""
        self._check_topic(topic)
        if not isinstance(group, str) or not group or group == DLQ_SUFFIX[1:]:
            raise ConfigError(f"invalid group {group!r}: it must be a non-empty string other than 'dlq'")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"invalid prefetch {prefetch!r}: it must be an integer >= 1")
        name = f"{self._prefix}{topic}.{group}"
        if len((name + ".retry.000000000").encode()) > _MAX_NAME:
            raise ConfigError(f"queue name {name[:40]!r}... is too long for RabbitMQ (255 bytes)")
        self._channel()
        if self._consume_connection is None:
            raise ServiceUnavailableError("the RabbitMQ transport is not started; call start() first")
        await self._declare_storage(topic + DLQ_SUFFIX)
        await self._declare(name, routing_key=topic)
        sub = AmqpSubscription(
            topic,
            name,
            errors=self._errors,
            timeout=self._timeout,
            schedule=self._publish_to_queue,
            on_close=self._subscriptions.discard,
        )
        async with self._guard(f"start a consumer on {name!r}"):
            channel = await self._consume_connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                # Declared again on this channel so the robust channel restores it (and its binding
                # and consumer) after a reconnection.
                amqp_queue = await channel.declare_queue(
                    name, durable=True, arguments=self._queue_arguments()
                )
                await amqp_queue.bind(self._exchange, routing_key=topic)
                await sub.attach(channel, amqp_queue)
            except BaseException:
                with contextlib.suppress(*self._connection_errors):  # keep the first error
                    await channel.close()
                raise
        self._subscriptions.add(sub)
        return sub

    # --- dead letters --------------------------------------------------------------------------

    async def _storage(self, topic: str) -> str:
        self._check_topic(topic)
        if topic.endswith(DLQ_SUFFIX):
            return await self._declare_storage(topic)
        raise ConfigError(
            f"RabbitMQ keeps no log of topic {topic!r}: browse and purge work on dead-letter topics "
            f"('<topic>{DLQ_SUFFIX}') only"
        )

    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Read up to ``limit`` records of a ``.dlq`` topic with ``basic.get``, then requeue them all."""
        name = await self._storage(topic)
        if limit <= 0:
            return []
        records: list[Record] = []
        # One channel for the whole read: the gets stay unacked until the nack at the end, so each
        # record is seen once; if anything fails, closing the channel requeues them as well.
        async with self._guard(f"browse {name!r}"), self._one_shot_channel() as underlay:
            last_tag: int | None = None
            while len(records) < limit:
                message = await underlay.basic_get(name, no_ack=False)
                if message.delivery_tag is None:  # Basic.GetEmpty
                    break
                last_tag = message.delivery_tag
                raw = message.header.properties.headers or {}
                headers = {str(k): header_text(v) for k, v in raw.items() if v is not None}
                records.append(Record(topic, message.body, headers, headers.get(CE_PARTITION_KEY)))
            if last_tag is not None:
                await underlay.basic_nack(last_tag, multiple=True, requeue=True)
        return records

    async def purge(self, topic: str) -> int:
        """Empty the queue of a ``.dlq`` topic; return how many records it removed."""
        name = await self._storage(topic)
        async with self._guard(f"purge {name!r}"), self._one_shot_channel() as underlay:
            result = await underlay.queue_purge(name)
        return int(result.message_count or 0)
