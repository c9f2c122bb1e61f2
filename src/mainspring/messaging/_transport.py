"""The seam between the generic broker and one message system: :class:`Transport`.

A transport moves :class:`Record` objects (a topic, a body of bytes, string headers and an optional
key). Everything above it -- codecs, typed handlers, context propagation, retry decisions, dead
letters, per-key ordering, concurrency, graceful stop, circuit breaking -- is written once in
:class:`mainspring.messaging.Broker`. A transport answers four questions the broker cannot:

* how to publish durably (a publish returns once the broker has the record: confirms, acks);
* how to hand out records to a consumer group (:meth:`Transport.subscribe` -> :class:`Subscription`);
* how to settle one delivery: :meth:`Delivery.ack`, :meth:`Delivery.retry` (redeliver after a delay,
  with new headers), :meth:`Delivery.release` (give it back at once, e.g. at shutdown); and,
  optionally, how to ack many at once (:meth:`Subscription.ack_many`);
* how to look at and empty a dead-letter topic (:meth:`Transport.browse`, :meth:`Transport.purge`).

Delivery is at least once: a record that is neither acked nor retried is redelivered eventually (after
the consumer dies, its connection drops, or its claim times out).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mainspring._lifecycle import AsyncLifecycle

# Header names on the wire. CloudEvents 1.0 attributes in binary mode use the ``ce_`` prefix (as in the
# CloudEvents Kafka binding) on every broker, so one record looks the same everywhere.
CE_SPECVERSION = "ce_specversion"
CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_TIME = "ce_time"
CE_CORRELATION_ID = "ce_correlationid"
CE_CAUSATION_ID = "ce_causationid"
CE_PARTITION_KEY = "ce_partitionkey"
CE_TRACEPARENT = "traceparent"
CE_TRACESTATE = "tracestate"
CONTENT_TYPE = "content-type"
#: 1-based delivery attempt; the broker sets it on retries. Transports that count deliveries
#: themselves (NATS JetStream) report their count through :attr:`Delivery.attempt` instead.
ATTEMPT = "ms_attempt"
#: Seconds since the epoch (float, as text) before which a delayed record must not be handled.
NOT_BEFORE = "ms_not_before"
#: Fingerprint of the Avro writer schema.
SCHEMA_FINGERPRINT = "ms_schema_fingerprint"
# Dead-letter headers, added to the original headers.
DLQ_TOPIC = "ms_dlq_topic"
DLQ_GROUP = "ms_dlq_group"
DLQ_REASON = "ms_dlq_reason"
DLQ_ERROR_TYPE = "ms_dlq_error_type"
DLQ_ERROR_MESSAGE = "ms_dlq_error_message"
DLQ_TRACEBACK = "ms_dlq_traceback"
DLQ_FIRST_FAILURE = "ms_dlq_first_failure"
DLQ_LAST_FAILURE = "ms_dlq_last_failure"
#: When a dead letter was published again by a replay (ISO 8601); transports that de-duplicate by
#: ``ce_id`` (NATS JetStream) treat a replay as a new publication.
REPLAYED_AT = "ms_replayed_at"
#: Suffix of the dead-letter topic: ``orders`` -> ``orders.dlq``.
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class Record:
    """One message as a transport sees it: bytes and string headers."""

    topic: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None


class Delivery(ABC):
    """A record handed to a consumer, to be settled exactly once by the broker.

    The broker calls exactly one of :meth:`ack`, :meth:`retry` or :meth:`release` per delivery (and
    possibly none if the process dies, in which case the transport redelivers it later).
    """

    __slots__ = ("record",)

    def __init__(self, record: Record) -> None:
        self.record = record

    @property
    def attempt(self) -> int:
        """The 1-based attempt number of this delivery (from the ``ms_attempt`` header by default)."""
        raw = self.record.headers.get(ATTEMPT)
        if raw is None:
            return 1
        try:
            return max(1, int(raw))
        except ValueError:
            return 1

    @abstractmethod
    async def ack(self) -> None:
        """Settle the delivery as done; it will not be delivered again."""

    @abstractmethod
    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Redeliver this record to the same topic and group after ``delay`` seconds, with ``headers``.

        ``headers`` is the full header set for the next attempt (the broker has already raised
        ``ms_attempt``). Never a tight loop: the record must not be handed out before the delay. The
        original delivery is settled by this call (at least once: schedule first, then ack).
        """

    @abstractmethod
    async def release(self) -> None:
        """Give the record back for redelivery as soon as possible (shutdown, breaker open).

        This does not count as a failed attempt where the system allows it.
        """


class Subscription(ABC):
    """A consumer group's stream of deliveries from one topic."""

    #: True when each ack costs a round trip and :meth:`ack_many` settles many in one: the broker then
    #: acks handled deliveries in the background, gathered, while its handlers go on. False (the
    #: default): the broker awaits each ack before its handler takes the next message.
    batch_acks: bool = False

    @abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Return up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds for the first.

        Returns an empty sequence on timeout. Must not busy-loop while idle.
        """

    async def ack_many(self, deliveries: Sequence[Delivery]) -> list[Exception | None]:
        """Ack ``deliveries`` of this subscription; return, in their order, None or why each failed.

        With :attr:`batch_acks`, the broker acks what its handlers finished through this method.
        This default acks them one after another with :meth:`Delivery.ack`; a transport whose ack
        waits for a reply overrides it to settle them in one call.
        """
        outcomes: list[Exception | None] = []
        for delivery in deliveries:
            try:
                await delivery.ack()
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, per delivery
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    @abstractmethod
    async def close(self) -> None:
        """Stop consuming; unsettled deliveries become redeliverable. Safe to call twice."""


class Transport(AsyncLifecycle):
    """One message system behind the generic broker."""

    #: URL scheme(s) this transport serves, e.g. ``("redis", "rediss")``.
    schemes: tuple[str, ...] = ()
    #: True when the transport preserves order per key within a topic (all of ours do, while no
    #: retries happen).
    ordered_by_key: bool = True

    @abstractmethod
    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Publish ``records`` durably and in order; return once the broker has accepted all of them.

        With ``delay``, the records must not be delivered before ``delay`` seconds from now. Raise
        :class:`mainspring.errors.ServiceUnavailableError` if the broker cannot be reached in time.
        """

    @abstractmethod
    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> Subscription:
        """Declare ``topic`` (and what retries need) and join consumer ``group`` on it."""

    @abstractmethod
    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Return up to ``limit`` records currently in ``topic`` without consuming them (oldest first)."""

    @abstractmethod
    async def purge(self, topic: str) -> int:
        """Delete every record in ``topic``; return how many were removed (best effort where unknown)."""
