"""The Kafka transport (``kafka://host:port,host:port``; extra ``kafka``), built on confluent-kafka.

Why confluent-kafka (librdkafka) and not aiokafka: librdkafka is the most used production client, and
it is the one we can test end to end here. Our Kafka tests run against the librdkafka mock cluster
(see :mod:`mainspring.testing`), on which aiokafka fails consumer groups with two or more members
(the follower's SyncGroup is rejected), while confluent-kafka groups rebalance correctly. The client
is synchronous, so every blocking call runs in a thread: a poller thread serves the producer's
delivery reports (resolved into asyncio futures with ``loop.call_soon_threadsafe``), and each
subscription has a consumer thread of its own (see :mod:`mainspring.messaging._kafka_consumer`).

Mapping:

* topic ``orders`` -> Kafka topic ``<prefix>.orders`` (just ``orders`` without the ``prefix``
  option); characters Kafka does not allow in topic names (all but letters, digits, ``.``, ``_``,
  ``-``) become ``_``, so ``a/b`` and ``a_b`` share a topic. Group ``g`` on topic ``orders`` ->
  Kafka group id ``g:<prefix>.orders``: one Kafka group per topic and group, so subscriptions to
  different topics never rebalance each other.
* publish: an idempotent producer with ``acks=all``; :meth:`KafkaTransport.publish` returns when
  every record's delivery report arrived, or raises ``ServiceUnavailableError`` after
  ``publish_timeout`` (librdkafka reconnects and resends meanwhile). The reports of one call are
  counted in the poller thread, which wakes the event loop once: when the last one came or at the
  first failure. ``Record.key`` is the Kafka key, so one key stays on one partition, in order.
  ``delay`` adds an ``ms_not_before`` header; consumers hold such a record until due.
* subscribe: one consumer per subscription (no auto commit; a new group starts at the earliest
  record) reading the topic and the group's retry topic ``<topic>.retry.<group>``. Offsets are
  committed per partition up to the first unsettled record only, asynchronously every
  ``commit_interval`` and synchronously on rebalance and close.
* retry: the record is produced to the retry topic with ``ms_not_before``; the original is settled
  after that record's delivery report. The subscription holds it in memory until due, without
  holding up the records behind it.
* release: the same subscription hands the record out again; it stays uncommitted meanwhile, so a
  crash or a rebalance redelivers it too.
* dead consumer: its partitions move when its session times out (``session_timeout``). A live one
  whose handlers are all busy (so nobody fetches) still serves rebalances: after 1 s without a
  fetch the subscription polls by itself, with its partitions paused.
* dead letters: ``<topic>.dlq`` is an ordinary topic (created on subscribe). ``browse`` reads it with
  a throwaway consumer that commits nothing. ``purge`` deletes records (admin DeleteRecords); where
  the cluster does not support that, it stores a "purged up to" mark per partition in the topic
  ``<topic>.purged`` that ``browse`` honours (consumer groups reading the topic do not).

Verified only against the librdkafka mock cluster (no real broker was available): produce and
consume, keys and order, group rebalancing with two members, contiguous commits, restarts, a member
killed with SIGKILL, retries and delays, brokers down and up, browse and the purge-mark fallback.
Not exercised at all: topic creation through CreateTopics and DeleteRecords (the mock answers
"unsupported"), TLS/SASL (pass them in ``producer_options`` / ``consumer_options``), real broker
failover, cooperative rebalancing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.errors import BadRequestError, ConfigError, ConfigProblem, ServiceUnavailableError
from mainspring.logging import get_logger
from mainspring.messaging._kafka_consumer import KafkaSubscription
from mainspring.messaging._kafka_topics import PURGED_SUFFIX, KafkaTopics
from mainspring.messaging._transport import NOT_BEFORE, Record, Subscription, Transport

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer
    from confluent_kafka.admin import AdminClient

__all__ = ["KafkaTransport"]

log = get_logger("mainspring.messaging")

_TOPIC_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
_MAX_TOPIC_LENGTH = 249
_CLIENT_LOG = logging.getLogger("mainspring.messaging.kafka.client")
_OptionValue = str | int | float | bool


def _parse_url(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092`` (port 9092 when missing)."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    problem = None
    if not sep or scheme.lower() != "kafka":
        problem = "must look like kafka://host:port[,host:port...]"
    elif "@" in netloc:
        problem = (
            "credentials do not go in a Kafka URL; pass SASL settings in producer_options/consumer_options"
        )
    hosts = []
    for part in netloc.split(",") if problem is None else ():
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, "9092"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problem = f"bad broker address {part.strip()!r}"
            break
        hosts.append(f"{host}:{port}")
    if problem is not None:
        raise ConfigError(
            "invalid Kafka URL", problems=[ConfigProblem("url", problem, repr(mask_url_password(url)))]
        )
    return ",".join(hosts)


def _positive(problems: list[ConfigProblem], name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    else:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(ConfigProblem(name, f"must be a number {bound}", repr(value)))


class KafkaTransport(Transport):
    """Kafka through confluent-kafka: idempotent confirmed publishes, groups, retry topics."""

    schemes: tuple[str, ...] = ("kafka",)
    #: Keyword options the constructor accepts; anything else is a :class:`ConfigError`.
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "prefix",
            "publish_timeout",
            "connect_timeout",
            "session_timeout",
            "linger_ms",
            "max_held",
            "commit_interval",
            "create_topics",
            "num_partitions",
            "replication_factor",
            "client_id",
            "producer_options",
            "consumer_options",
        }
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        session_timeout: float = 10.0,
        linger_ms: int = 5,
        max_held: int = 10_000,
        commit_interval: float = 0.05,
        create_topics: bool = True,
        num_partitions: int = -1,
        replication_factor: int = -1,
        client_id: str = "mainspring",
        producer_options: Mapping[str, _OptionValue] | None = None,
        consumer_options: Mapping[str, _OptionValue] | None = None,
        **unknown: object,
    ) -> None:
        """Check the options and remember them; nothing connects before :meth:`start`.

        ``prefix`` prefixes topics and group ids. ``session_timeout`` (seconds) is how long a dead
        member keeps its partitions. ``max_held``: delayed records held in memory per subscription
        before fetching pauses. ``commit_interval`` (seconds): acks within it share one
        asynchronous offset commit (after a crash, the records acked in the last interval come
        again). ``create_topics``: create missing topics through the admin API
        (``num_partitions``/``replication_factor``, -1 = broker default), falling back to the
        broker's auto-creation where that API is unsupported. ``producer_options`` and
        ``consumer_options`` are extra librdkafka properties (TLS, SASL, tuning); they win over ours.
        """
        problems: list[ConfigProblem] = [
            ConfigProblem(name, f"unknown Kafka transport option; known: {', '.join(sorted(self.options))}")
            for name in sorted(unknown)
        ]
        for name, value in (
            ("publish_timeout", publish_timeout),
            ("connect_timeout", connect_timeout),
            ("session_timeout", session_timeout),
            ("max_held", max_held),
        ):
            _positive(problems, name, value)
        _positive(problems, "linger_ms", linger_ms, allow_zero=True)
        _positive(problems, "commit_interval", commit_interval, allow_zero=True)
        for name, value in (("num_partitions", num_partitions), ("replication_factor", replication_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                problems.append(
                    ConfigProblem(name, "must be an integer >= 1, or -1 for the default", repr(value))
                )
        if not isinstance(prefix, str) or _TOPIC_ILLEGAL.search(prefix):
            problems.append(
                ConfigProblem("prefix", "must use only letters, digits, '.', '_', '-'", repr(prefix))
            )
        for name, extra in (("producer_options", producer_options), ("consumer_options", consumer_options)):
            if extra is not None and not isinstance(extra, Mapping):
                problems.append(
                    ConfigProblem(name, "must be a mapping of librdkafka properties", repr(extra))
                )
        if problems:
            raise ConfigError("invalid options for the Kafka transport", problems=problems)
        self._kafka: Any = require("confluent_kafka", extra="kafka", feature="the Kafka transport")
        self._admin_module: Any = require(
            "confluent_kafka.admin", extra="kafka", feature="the Kafka transport"
        )
        self._bootstrap = _parse_url(url)
        self._prefix = prefix
        self._publish_timeout = float(publish_timeout)
        self._connect_timeout = float(connect_timeout)
        self._session_ms = int(session_timeout * 1000)
        self._linger_ms = linger_ms
        self._max_held = int(max_held)
        self._commit_interval = float(commit_interval)
        self._create_topics = create_topics
        self._num_partitions = num_partitions
        self._replication_factor = replication_factor
        self._client_id = client_id
        self._producer_options = dict(producer_options or {})
        self._consumer_options = dict(consumer_options or {})
        self._producer: Producer | None = None
        self._topics = KafkaTopics(
            self._kafka,
            self._admin_module,
            {**self._base_config(), **self._consumer_options},
            connect_timeout,
        )
        self._admin: AdminClient | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._fatal: str | None = None
        self._known_topics: set[str] = set()
        self._subscriptions: set[KafkaSubscription] = set()

    # --- names -------------------------------------------------------------------------------------

    def physical(self, topic: str) -> str:
        """The Kafka topic name used for ``topic`` (``prefix``, illegal characters -> ``_``)."""
        if not topic:
            raise BadRequestError("a Kafka topic name cannot be empty")
        name = _TOPIC_ILLEGAL.sub("_", f"{self._prefix}.{topic}" if self._prefix else topic)
        if len(name) > _MAX_TOPIC_LENGTH or name in {".", ".."}:
            raise BadRequestError(
                f"Kafka topic name {name!r} is invalid (at most {_MAX_TOPIC_LENGTH} characters, not '.' "
                "or '..'); use a shorter topic or prefix"
            )
        return name

    def group_id(self, topic: str, group: str) -> str:
        """The Kafka group id of ``group`` on ``topic``: ``<group>:<kafka topic>``.

        One Kafka group per (topic, group), as the other transports have: subscriptions to different
        topics never rebalance each other. Kafka topic names cannot contain ``:``, so the id is
        unambiguous.
        """
        return f"{group}:{self.physical(topic)}"

    def retry_topic(self, topic: str, group: str) -> str:
        """The Kafka topic holding ``group``'s delayed retries of ``topic``."""
        return self.physical(f"{topic}.retry.{group}")

    # --- lifecycle ---------------------------------------------------------------------------------

    def _base_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self._bootstrap,
            "client.id": self._client_id,
            "error_cb": self._on_error,
            # librdkafka's own log lines go to stdlib logging (served by poll), not straight to stderr.
            "logger": _CLIENT_LOG,
        }

    async def start(self) -> None:
        """Create the producer, check the cluster answers within ``connect_timeout``, start the poller."""
        if self._producer is not None:
            return
        config = {
            **self._base_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self._linger_ms,
            # librdkafka gives up on a record after this; the delivery report then carries the error.
            "message.timeout.ms": max(1, int(self._publish_timeout * 1000)),
            "error_cb": self._on_producer_error,
            **self._producer_options,
        }
        producer: Producer = self._kafka.Producer(config)
        try:
            await asyncio.to_thread(producer.list_topics, None, self._connect_timeout)
        except self._kafka.KafkaException as exc:
            await asyncio.to_thread(_close_client, producer)
            raise ServiceUnavailableError(
                f"kafka at {self._bootstrap} did not answer within {self._connect_timeout:g} s: {exc}",
                details={"backend": "kafka"},
            ) from exc
        self._stopping.clear()
        self._fatal = None
        self._producer = producer
        admin: AdminClient = self._admin_module.AdminClient(self._base_config() | self._producer_options)
        self._admin = admin
        self._poller = threading.Thread(
            target=self._poll_clients, args=(producer, admin), name="mainspring-kafka-poller", daemon=True
        )
        self._poller.start()

    async def stop(self) -> None:
        """Close the subscriptions, wait for outstanding deliveries (``publish_timeout``), stop the poller."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        producer, self._producer = self._producer, None
        self._admin = None
        if producer is None:
            return
        try:
            await asyncio.to_thread(producer.flush, self._publish_timeout)
        finally:
            self._stopping.set()
            poller, self._poller = self._poller, None
            if poller is not None:
                await asyncio.to_thread(poller.join)
            await asyncio.to_thread(_close_client, producer)

    def _poll_clients(self, producer: Producer, admin: AdminClient) -> None:
        # Delivery reports, error callbacks and log lines are served here, off the event loop.
        while not self._stopping.is_set():
            producer.poll(0.1)
            admin.poll(0)

    def _on_producer_error(self, error: KafkaError) -> None:
        if error.fatal():
            # Only the idempotent producer has fatal errors (a broken sequence); it is unusable now.
            self._fatal = str(error)
            log.error("messaging.kafka.fatal_error", error=str(error))
        else:
            self._on_error(error)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == self._kafka.KafkaError._TRANSPORT:
            # One failed connection attempt; librdkafka keeps reconnecting (with backoff) by itself.
            log.debug("messaging.kafka.connection_failed", error=str(error))
        else:
            log.warning("messaging.kafka.client_error", error=str(error))

    def _require_admin(self) -> AdminClient:
        if self._admin is None:
            raise ServiceUnavailableError(
                "the Kafka transport is not started: call 'await transport.start()' first"
            )
        return self._admin

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise ServiceUnavailableError(
                "the Kafka transport is not started: call 'await transport.start()' first"
            )
        if self._fatal is not None:
            raise ServiceUnavailableError(
                f"the Kafka producer hit a fatal error ({self._fatal}); restart the transport"
            )
        return self._producer

    # --- publishing --------------------------------------------------------------------------------

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Produce ``records`` in order and wait for all their delivery reports."""
        if delay is not None and delay > 0:
            due = f"{time.time() + delay:.6f}"
            records = [Record(r.topic, r.body, {**r.headers, NOT_BEFORE: due}, r.key) for r in records]
        await self._produce_all([(self.physical(r.topic), r) for r in records])

    async def produce_to(self, kafka_topic: str, record: Record) -> None:
        """Produce one record to an already mapped Kafka topic (retry topics) and wait for it."""
        await self._produce_all([(kafka_topic, record)])

    async def _produce_all(self, items: Sequence[tuple[str, Record]]) -> None:
        producer = self._require_producer()
        if not items:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        future: asyncio.Future[None] = loop.create_future()
        # Abandoned when producing fails half-way; a report may still fail it later, unseen.
        future.add_done_callback(_retrieve)
        report = _Reports(self._kafka, loop, future, len(items)).report
        produce = producer.produce
        for kafka_topic, record in items:
            headers = record.headers
            while True:
                try:
                    # confluent-kafka sends str header values as UTF-8 and takes a dict as is.
                    produce(
                        kafka_topic,
                        value=record.body,
                        key=record.key.encode() if record.key is not None else None,
                        headers=headers if type(headers) is dict else dict(headers),
                        on_delivery=report,
                    )
                    break
                except BufferError:
                    # The local queue is full (broker slow or away): wait for room, within the deadline.
                    if loop.time() >= deadline:
                        self._unavailable(f"local queue full for {self._publish_timeout:g} s")
                    await asyncio.sleep(0.01)
                except self._kafka.KafkaException as exc:
                    raise BadRequestError(f"kafka refused a record for topic {kafka_topic!r}: {exc}") from exc
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await future
        except TimeoutError:
            self._unavailable(f"no delivery report within {self._publish_timeout:g} s")

    def _unavailable(self, why: str) -> None:
        raise ServiceUnavailableError(
            f"kafka at {self._bootstrap}: publish failed ({why}); check that the cluster is reachable",
            details={"backend": "kafka"},
        )

    # --- topics ------------------------------------------------------------------------------------

    async def _ensure_topics(self, names: Sequence[str]) -> None:
        missing = [name for name in names if name not in self._known_topics]
        if missing:
            await asyncio.to_thread(
                self._topics.ensure,
                self._require_producer(),
                self._require_admin() if self._create_topics else None,
                missing,
                num_partitions=self._num_partitions,
                replication_factor=self._replication_factor,
            )
            self._known_topics.update(missing)

    # --- consuming ---------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> Subscription:
        """Create the topic, its retry topic and ``<topic>.dlq`` if needed, and join ``group``."""
        if not group:
            raise BadRequestError("a Kafka consumer group name cannot be empty")
        if prefetch < 1:
            raise BadRequestError(f"prefetch must be >= 1, got {prefetch}")
        self._require_producer()
        main, retry = self.physical(topic), self.retry_topic(topic, group)
        await self._ensure_topics([main, retry, self.physical(topic + ".dlq")])
        config = {
            **self._base_config(),
            "group.id": self.group_id(topic, group),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self._session_ms,
            "heartbeat.interval.ms": max(100, self._session_ms // 4),
            "enable.partition.eof": False,
            # How many records librdkafka fetches ahead per partition (its default is 100000).
            "queued.min.messages": max(prefetch * 10, 1000),
            **self._consumer_options,
        }
        subscription = KafkaSubscription(
            topic=topic,
            topics={main: topic, retry: topic},
            retry_topic=retry,
            config=config,
            kafka=self._kafka,
            produce=self.produce_to,
            max_held=self._max_held,
            commit_interval=self._commit_interval,
            on_close=self._subscriptions.discard,
        )
        await subscription.open()
        self._subscriptions.add(subscription)
        return subscription

    # --- dead letters ------------------------------------------------------------------------------

    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Read up to ``limit`` records of ``topic`` from the start (after any purge mark), commit nothing."""
        self._require_producer()
        if limit < 1:
            return []
        return await asyncio.to_thread(self._topics.browse, topic, self.physical(topic), limit)

    async def purge(self, topic: str) -> int:
        """Delete every record of ``topic`` (DeleteRecords, or a purge mark where that is unsupported)."""
        admin = self._require_admin()
        kafka_topic = self.physical(topic)
        count, ranges = await asyncio.to_thread(self._topics.purge_plan, kafka_topic)
        if count == 0:
            return 0
        if not await asyncio.to_thread(self._topics.delete_records, admin, kafka_topic, ranges):
            await self.produce_to(kafka_topic + PURGED_SUFFIX, KafkaTopics.marks_record(topic, ranges))
        return count


class _Reports:
    """The delivery reports of one publish call: resolve its future once, after the last or a failure.

    Reports arrive in the poller thread (and in the thread of ``flush()`` while the transport stops),
    hence the lock.
    """

    __slots__ = ("_future", "_kafka", "_lock", "_loop", "_remaining")

    def __init__(
        self, kafka: Any, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], count: int
    ) -> None:
        self._kafka = kafka
        self._loop = loop
        self._future = future
        self._remaining = count
        self._lock = threading.Lock()

    def report(self, error: KafkaError | None, message: Message) -> None:
        outcome: BaseException | None = None
        if error is not None:
            if error.code() == self._kafka.KafkaError.MSG_SIZE_TOO_LARGE:
                outcome = BadRequestError(f"kafka rejected a record as too large: {error}")
            else:
                outcome = ServiceUnavailableError(
                    f"kafka did not confirm a record for {message.topic()!r}: {error}",
                    details={"backend": "kafka"},
                )
        with self._lock:
            if self._remaining <= 0:
                return  # resolved already (by an earlier failure)
            self._remaining = 0 if outcome is not None else self._remaining - 1
            if self._remaining:
                return
        try:
            self._loop.call_soon_threadsafe(_resolve, self._future, outcome)
        except RuntimeError:
            # The loop is closed: nobody waits for this report any more.
            log.warning("messaging.kafka.report_after_loop_closed", error=str(error))


def _close_client(producer: Producer) -> None:
    """Destroy the client now (connections, threads) rather than at garbage collection."""
    close = getattr(producer, "close", None)  # Producer.close() is new in confluent-kafka 2.x
    if close is not None:
        close()


def _resolve(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
