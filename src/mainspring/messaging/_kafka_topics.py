"""Blocking topic chores of the Kafka transport: create topics, read one from the start, empty it.

Every method here blocks on the network (confluent-kafka is synchronous); the transport calls them
through ``asyncio.to_thread``. Reading uses a throwaway consumer that is assigned partitions directly
(no group join, nothing committed), so browsing never moves any group's offsets.

Emptying a topic is the admin DeleteRecords request. Clusters without it (the librdkafka mock
cluster, for one) get a fallback: a "purged up to" offset per partition, stored as the latest record
of ``<topic>.purged``, which :meth:`KafkaTopics.browse` starts after. Consumer groups reading the
topic itself do not see the marks.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mainspring.errors import ServiceUnavailableError
from mainspring.messaging._kafka_consumer import decode_headers
from mainspring.messaging._transport import Record

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, Producer
    from confluent_kafka.admin import AdminClient

__all__ = ["PURGED_SUFFIX", "KafkaTopics"]

#: Suffix of the topic holding the purge marks of a topic whose cluster cannot delete records.
PURGED_SUFFIX = ".purged"

#: ``{partition: (first offset, end offset)}``
Ranges = dict[int, tuple[int, int]]


class KafkaTopics:
    """Topic creation, browsing and purging for one cluster; every method blocks."""

    def __init__(
        self, kafka: Any, admin_module: Any, consumer_config: Mapping[str, Any], timeout: float
    ) -> None:
        """``consumer_config`` is the client configuration for throwaway consumers (no group id)."""
        self._kafka = kafka
        self._admin_module = admin_module
        self._consumer_config = dict(consumer_config)
        self._timeout = timeout

    # --- creating ----------------------------------------------------------------------------------

    def ensure(
        self,
        producer: Producer,
        admin: AdminClient | None,
        names: Sequence[str],
        *,
        num_partitions: int,
        replication_factor: int,
    ) -> None:
        """Create ``names`` through ``admin`` (if given), then check through metadata that they exist.

        Where CreateTopics is unsupported, the metadata request lets the broker auto-create them.
        """
        kafka = self._kafka
        if admin is not None:
            new_topics = [self._admin_module.NewTopic(n, num_partitions, replication_factor) for n in names]
            for name, future in admin.create_topics(new_topics, request_timeout=self._timeout).items():
                try:
                    future.result(self._timeout)
                except kafka.KafkaException as exc:
                    code = exc.args[0].code() if exc.args else None
                    if code not in (
                        kafka.KafkaError.TOPIC_ALREADY_EXISTS,
                        kafka.KafkaError._UNSUPPORTED_FEATURE,
                    ):
                        raise ServiceUnavailableError(
                            f"kafka could not create topic {name!r}: {exc}"
                        ) from exc
        for name in names:
            try:
                metadata = producer.list_topics(name, self._timeout)
            except kafka.KafkaException as exc:
                raise ServiceUnavailableError(f"kafka metadata for topic {name!r} failed: {exc}") from exc
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                raise ServiceUnavailableError(
                    f"kafka topic {name!r} does not exist and could not be created "
                    f"({topic.error if topic is not None else 'no metadata'}); create it, or enable "
                    "auto.create.topics.enable on the brokers"
                )

    # --- reading -----------------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        config = {
            **self._consumer_config,
            # Never joined (partitions are assigned directly), so the id only has to be unique.
            "group.id": f"mainspring-browse-{secrets.token_hex(6)}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # A fetch waiting for data holds up the broker connection: keep the wait short.
            "fetch.wait.max.ms": 50,
        }
        consumer: Consumer = self._kafka.Consumer(config)
        return consumer

    def _ranges(self, consumer: Consumer, kafka_topic: str) -> Ranges:
        """``{partition: (low, high)}`` watermarks of ``kafka_topic``; empty if it does not exist."""
        info = consumer.list_topics(kafka_topic, self._timeout).topics.get(kafka_topic)
        if info is None or info.error is not None:
            return {}
        ranges: Ranges = {}
        for pid in info.partitions:
            tp = self._kafka.TopicPartition(kafka_topic, pid)
            low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout)
            ranges[pid] = (low, high)
        return ranges

    def _read(self, consumer: Consumer, kafka_topic: str, ranges: Ranges, limit: int) -> list[Message]:
        """Read partitions ``{pid: (start, end)}`` of ``kafka_topic``, at most ``limit`` records each."""
        kafka = self._kafka
        if not ranges:
            return []
        consumer.assign(
            [kafka.TopicPartition(kafka_topic, pid, start) for pid, (start, _end) in ranges.items()]
        )
        taken = dict.fromkeys(ranges, 0)
        open_parts = set(ranges)
        messages: list[Message] = []
        deadline = time.monotonic() + self._timeout
        while open_parts and time.monotonic() < deadline:
            # consume(n, timeout) would wait for all n; poll() returns with the first record.
            first = consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            for message in [first, *consumer.consume(500, 0)] if first is not None else []:
                pid, offset = message.partition(), message.offset()
                if message.error() is not None or pid not in open_parts or offset is None:
                    continue
                messages.append(message)
                taken[pid] += 1
                if taken[pid] >= limit or offset >= ranges[pid][1] - 1:
                    open_parts.discard(pid)
            # Trailing offsets may be control records that are never handed out: stop at the end too.
            for tp in consumer.position([kafka.TopicPartition(kafka_topic, pid) for pid in open_parts]):
                if tp.offset >= ranges[tp.partition][1]:
                    open_parts.discard(tp.partition)
        # Stop fetching: later metadata and watermark requests must not queue behind fetches.
        consumer.unassign()
        return messages

    def _marks(self, consumer: Consumer, kafka_topic: str) -> dict[int, int]:
        """The latest purge marks of ``kafka_topic`` (``{partition: first offset to keep}``)."""
        marks_topic = kafka_topic + PURGED_SUFFIX
        last = {
            pid: (high - 1, high)
            for pid, (low, high) in self._ranges(consumer, marks_topic).items()
            if high > low
        }
        messages = self._read(consumer, marks_topic, last, 1)
        if not messages:
            return {}
        latest = max(messages, key=lambda m: m.timestamp()[1])
        decoded = json.loads(latest.value() or b"{}")
        return {int(pid): int(offset) for pid, offset in decoded.get("purged_up_to", {}).items()}

    def _live(self, consumer: Consumer, kafka_topic: str) -> Ranges:
        """The ranges of ``kafka_topic`` that hold records not purged yet."""
        watermarks = self._ranges(consumer, kafka_topic)
        marks = self._marks(consumer, kafka_topic)
        ranges = {}
        for pid, (low, high) in watermarks.items():
            start = max(low, marks.get(pid, 0))
            if start < high:
                ranges[pid] = (start, high)
        return ranges

    def browse(self, topic: str, kafka_topic: str, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``kafka_topic`` (handed out as ``topic``), oldest first."""
        consumer = self._consumer()
        try:
            messages = self._read(consumer, kafka_topic, self._live(consumer, kafka_topic), limit)
        except self._kafka.KafkaException as exc:
            raise ServiceUnavailableError(f"kafka: browsing {kafka_topic!r} failed: {exc}") from exc
        finally:
            consumer.close()
        messages.sort(key=lambda m: (m.timestamp()[1], m.partition() or 0, m.offset() or 0))
        records = []
        for message in messages[:limit]:
            key = message.key()
            records.append(
                Record(
                    topic,
                    message.value() or b"",
                    decode_headers(message.headers()),
                    key.decode("utf-8", "replace") if key is not None else None,
                )
            )
        return records

    # --- emptying ----------------------------------------------------------------------------------

    def purge_plan(self, kafka_topic: str) -> tuple[int, Ranges]:
        """How many records of ``kafka_topic`` are not purged yet, and every partition's watermarks."""
        consumer = self._consumer()
        try:
            live = self._live(consumer, kafka_topic)
            ranges = self._ranges(consumer, kafka_topic)
        except self._kafka.KafkaException as exc:
            raise ServiceUnavailableError(f"kafka: reading {kafka_topic!r} failed: {exc}") from exc
        finally:
            consumer.close()
        return sum(end - start for start, end in live.values()), ranges

    def delete_records(self, admin: AdminClient, kafka_topic: str, ranges: Ranges) -> bool:
        """Delete below each range's end; ``False`` if the cluster does not support DeleteRecords."""
        kafka = self._kafka
        partitions = [kafka.TopicPartition(kafka_topic, pid, end) for pid, (_start, end) in ranges.items()]
        for future in admin.delete_records(partitions, request_timeout=self._timeout).values():
            try:
                future.result(self._timeout)
            except kafka.KafkaException as exc:
                if exc.args and exc.args[0].code() == kafka.KafkaError._UNSUPPORTED_FEATURE:
                    return False
                raise ServiceUnavailableError(
                    f"kafka: deleting records of {kafka_topic!r} failed: {exc}"
                ) from exc
        return True

    @staticmethod
    def marks_record(topic: str, ranges: Ranges) -> Record:
        """The record for ``<kafka topic>.purged`` marking all of ``ranges`` (every partition) purged."""
        body = json.dumps({"purged_up_to": {str(pid): end for pid, (_start, end) in ranges.items()}})
        # One key, so every mark of a topic lands on one partition, in order.
        return Record(topic + PURGED_SUFFIX, body.encode(), {}, "marks")
