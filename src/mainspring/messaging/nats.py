"""The NATS JetStream transport (``nats://``, ``tls://``; extra ``nats``).

Names. Every topic gets its own stream; the subject is ``<prefix>.<topic>`` and the stream name is the
subject with ``.`` replaced by ``_`` (stream names cannot contain ``.``): with prefix ``acme``, topic
``orders.dlq`` is subject ``acme.orders.dlq`` in stream ``acme_orders_dlq``. A consumer group is the
durable pull consumer named like the group (``.`` -> ``_``) on the topic's stream. The mapping is not
one-to-one (``a.b`` and ``a_b`` share a stream name); a clash is detected when the stream (or consumer)
is declared and raises :class:`~mainspring.errors.ConfigError` instead of mixing two topics. Topics,
groups and the prefix are dot-separated tokens of letters, digits, ``_`` and ``-``.

Publishing waits for the PubAck of every record. A batch is sent back to back on the one connection
(JetStream stores it in that order) and the acks are awaited together; records whose ack did not come
are sent again, in order, until ``publish_timeout``. ``Nats-Msg-Id`` is the ``ce_id`` header, so a
record sent twice within the stream's ``duplicate_window`` is stored once -- including a dead letter
replayed to its topic with its original ``ce_id`` within that window. Dead letters (records with
``ms_dlq_group``) add the group and the failure time to the id, so each failure is kept. During an
outage nats-py buffers the records and reconnects by itself; a publish that is not confirmed within
``publish_timeout`` raises :class:`~mainspring.errors.ServiceUnavailableError` (the buffered copy
may still reach the server after reconnecting: publish again with the same ``ce_id`` and it is
de-duplicated).

Consuming. ``fetch`` is a JetStream pull with a timeout. ``ack()`` is not confirmed by the server (a
lost ack costs one redelivery). A consumer that dies holding messages gets them redelivered to its
group after ``ack_wait``, so ``ack_wait`` must exceed the longest handler (no ``in_progress``
heartbeats are sent). Closing a subscription (or stopping the transport) gives back what it holds (``nak``).

Delays. JetStream of the servers this targets (2.9, 2.10) has no per-message delay, so a delayed
publish carries the ``ms_not_before`` header and a consumer that fetches it early gives it back with
``nak(delay=remaining)``. That costs one delivery count, so :attr:`NatsDelivery.attempt`
(``num_delivered``) subtracts one for records published with a delay; a consumer that only met such
a record after it was due may allow it one extra attempt. ``retry(delay)`` is ``nak(delay)``:
JetStream keeps the original headers, and the attempt number comes from ``num_delivered``.
``release()`` is a plain ``nak``, which JetStream counts as a delivery too.

Dead letters live in the ``<topic>.dlq`` stream (declared with its parent topic); :meth:`browse` reads
it by sequence without consuming and :meth:`purge` empties it. Header values that NATS headers cannot
carry (non-ASCII, line breaks, outer blanks) travel base64-encoded as ``=?utf-8?b?...?=``; header names
starting with ``Nats-`` are reserved for the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.errors import (
    BadRequestError,
    ConfigError,
    ConfigProblem,
    ServiceUnavailableError,
)
from mainspring.logging import get_logger
from mainspring.messaging._nats_consumer import (
    RESERVED_HEADER_PREFIX,
    NatsDelivery,
    NatsSubscription,
    encode_value,
    to_record,
)
from mainspring.messaging._transport import (
    CE_ID,
    CE_PARTITION_KEY,
    DLQ_GROUP,
    DLQ_LAST_FAILURE,
    DLQ_SUFFIX,
    NOT_BEFORE,
    REPLAYED_AT,
    Record,
    Transport,
)

__all__ = ["NatsDelivery", "NatsSubscription", "NatsTransport"]

log = get_logger("mainspring.messaging")

_FEATURE = "the NATS transport"
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_MSG_ID = "Nats-Msg-Id"
_STORAGES = ("file", "memory")
# First wait for the acks of a publish before the unconfirmed records are sent again (doubles each time).
_FIRST_ACK_WAIT = 1.0
# Header names and topics already checked are remembered, up to this many (then checked each time).
_MEMO_LIMIT = 1024
_checked_header_names: set[str] = set()


class NatsTransport(Transport):
    """Records in NATS JetStream through nats-py: a stream per topic, a durable pull consumer per group."""

    schemes = ("nats", "tls")
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "prefix",
            "publish_timeout",
            "connect_timeout",
            "request_timeout",
            "ack_wait",
            "max_deliver",
            "duplicate_window",
            "max_age",
            "storage",
            "replicas",
            "reconnect_wait",
            "client_name",
        }
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        duplicate_window: float = 120.0,
        max_age: float | None = None,
        storage: str = "file",
        replicas: int = 1,
        reconnect_wait: float = 1.0,
        client_name: str = "mainspring",
    ) -> None:
        """Check and remember the configuration; the connection is made in :meth:`start`.

        ``prefix`` defaults to the URL path (``nats://host:4222/acme`` -> ``acme``), else none.
        ``ack_wait`` is how long a consumer may hold a message before JetStream hands it to another
        (a dead consumer's messages come back after it); ``max_deliver`` (-1: unlimited) caps
        deliveries, leave it above the broker's retry limit; ``duplicate_window``, ``max_age`` (None:
        keep forever), ``storage`` and ``replicas`` configure new streams.
        """
        problems: list[ConfigProblem] = []
        servers: list[str] = []
        url_prefix = ""
        for part in str(url).split(","):
            parsed = urlsplit(part.strip())
            if parsed.scheme not in self.schemes or not parsed.hostname:
                problems.append(
                    ConfigProblem(
                        "url", "must be nats://host[:port] or tls://host[:port]", mask_url_password(part)
                    )
                )
                continue
            try:
                parsed.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                problems.append(ConfigProblem("url", "invalid port", mask_url_password(part)))
                continue
            servers.append(parsed._replace(path="", query="", fragment="").geturl())
            url_prefix = url_prefix or parsed.path.strip("/")
        for name, value in (
            ("publish_timeout", publish_timeout),
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
            ("ack_wait", ack_wait),
            ("duplicate_window", duplicate_window),
            ("reconnect_wait", reconnect_wait),
            ("max_age", 1.0 if max_age is None else max_age),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                problems.append(ConfigProblem(name, "must be a number of seconds > 0", repr(value)))
        if (
            isinstance(max_deliver, bool)
            or not isinstance(max_deliver, int)
            or not (max_deliver == -1 or max_deliver >= 1)
        ):
            problems.append(ConfigProblem("max_deliver", "must be -1 (unlimited) or >= 1", repr(max_deliver)))
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            problems.append(ConfigProblem("replicas", "must be an integer from 1 to 5", repr(replicas)))
        if storage not in _STORAGES:
            problems.append(ConfigProblem("storage", "must be 'file' or 'memory'", repr(storage)))
        if not isinstance(client_name, str):
            problems.append(ConfigProblem("client_name", "must be a string", repr(client_name)))
        prefix = url_prefix if prefix is None else prefix
        if not isinstance(prefix, str) or (prefix and not _NAME.match(prefix)):
            problems.append(
                ConfigProblem(
                    "prefix", "must be dot-separated tokens of letters, digits, '_' and '-'", repr(prefix)
                )
            )
        if problems:
            raise ConfigError("invalid options for the NATS transport", problems=problems)
        # Import now: a missing extra is a configuration error, better reported at assembly time.
        self._nats = require("nats", extra="nats", feature=_FEATURE)
        self._errors = require("nats.errors", extra="nats", feature=_FEATURE)
        self._js_errors = require("nats.js.errors", extra="nats", feature=_FEATURE)
        self._api = require("nats.js.api", extra="nats", feature=_FEATURE)
        self._servers = servers
        self._prefix = str(prefix)
        self._publish_timeout = float(publish_timeout)
        self._connect_timeout = float(connect_timeout)
        self._request_timeout = float(request_timeout)
        self._ack_wait = float(ack_wait)
        self._max_deliver = max_deliver
        self._duplicate_window = float(duplicate_window)
        self._max_age = None if max_age is None else float(max_age)
        self._storage = storage
        self._replicas = replicas
        self._reconnect_wait = float(reconnect_wait)
        self._client_name = client_name
        self._subjects: dict[str, str] = {}
        self._nc: Any = None
        self._js: Any = None
        self._jsm: Any = None
        self._streams: set[str] = set()
        self._subscriptions: list[NatsSubscription] = []
        self._outage = False
        self._declare_lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The server URL(s) with passwords masked."""
        return ",".join(mask_url_password(s) for s in self._servers)

    # --- names ------------------------------------------------------------------------------------

    def subject(self, topic: str) -> str:
        """The NATS subject of ``topic``: ``<prefix>.<topic>``."""
        subject = self._subjects.get(topic) if isinstance(topic, str) else None
        if subject is not None:
            return subject
        if not isinstance(topic, str) or not _NAME.match(topic):
            raise BadRequestError(
                f"invalid topic name {topic!r} for NATS: use dot-separated tokens of letters, digits, "
                "'_' and '-'",
                code="invalid_topic",
            )
        subject = f"{self._prefix}.{topic}" if self._prefix else topic
        if len(self._subjects) < _MEMO_LIMIT:
            self._subjects[topic] = subject
        return subject

    def stream_name(self, topic: str) -> str:
        """The JetStream stream holding ``topic``: its subject with ``.`` replaced by ``_``."""
        return self.subject(topic).replace(".", "_")

    @staticmethod
    def consumer_name(group: str) -> str:
        """The durable consumer name of ``group``: the group with ``.`` replaced by ``_``."""
        if not isinstance(group, str) or not _NAME.match(group):
            raise ConfigError(
                f"invalid group name {group!r} for NATS: use dot-separated tokens of letters, digits, "
                "'_' and '-'"
            )
        return group.replace(".", "_")

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (nats-py reconnects by itself afterwards) and check that JetStream answers."""
        if self._nc is not None:
            return
        nc = self._nats.NATS()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await nc.connect(
                    self._servers,
                    name=self._client_name,
                    connect_timeout=self._connect_timeout,
                    reconnect_time_wait=self._reconnect_wait,
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                jsm = nc.jsm(timeout=self._request_timeout)
                await jsm.account_info()
        except (self._errors.Error, OSError, TimeoutError) as exc:
            await nc.close()
            detail = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ServiceUnavailableError(
                f"NATS transport: cannot reach JetStream at {self.url} ({detail}); check that nats-server "
                f"runs with JetStream enabled (-js) (connect_timeout {self._connect_timeout:g} s)",
                details={"backend": "nats", "operation": "start"},
            ) from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=self._request_timeout)
        self._jsm = jsm

    async def stop(self) -> None:
        """Close the subscriptions (giving back what they hold), flush and close; safe to call twice."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
        nc, self._nc, self._js, self._jsm = self._nc, None, None, None
        self._streams.clear()
        if nc is None:
            return
        try:
            await nc.close()
        except OSError as exc:
            # nats-py flushes what it buffered during a reconnect into the lost socket and gives up
            # before closing it; unsettled messages come back after ack_wait, but the socket must go.
            log.warning("nats connection lost while closing", error=f"{type(exc).__name__}: {exc}")
            lost = getattr(nc, "_transport", None)
            if lost is not None:
                lost.close()

    async def _on_error(self, exc: Exception) -> None:
        # One warning per outage: nats-py reports every failed reconnect attempt here.
        if self._outage:
            log.debug("nats reconnect attempt failed", error=f"{type(exc).__name__}: {exc}")
        else:
            log.warning("nats connection error", error=f"{type(exc).__name__}: {exc}")

    async def _on_disconnected(self) -> None:
        if self._nc is None:  # our own stop()
            return
        self._outage = True
        log.warning("nats disconnected; reconnecting", servers=self.url)

    async def _on_reconnected(self) -> None:
        self._outage = False
        log.info("nats reconnected", servers=self.url)

    def _client(self) -> tuple[Any, Any]:
        if self._js is None:
            raise ServiceUnavailableError(
                "the NATS transport is not started: call 'await transport.start()' or use 'async with'"
            )
        return self._js, self._jsm

    def _unavailable(self, operation: str, exc: BaseException) -> ServiceUnavailableError:
        detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return ServiceUnavailableError(
            f"NATS transport at {self.url}: {operation} failed ({detail})",
            details={"backend": "nats", "operation": operation},
        )

    # --- declarations -----------------------------------------------------------------------------

    async def _declare_stream(self, topic: str) -> str:
        name = self.stream_name(topic)
        if name in self._streams:
            return name
        _, jsm = self._client()
        subject = self.subject(topic)
        config = self._api.StreamConfig(
            name=name,
            description=f"mainspring topic {topic}",
            subjects=[subject],
            retention=self._api.RetentionPolicy.LIMITS,
            storage=self._api.StorageType(self._storage),
            num_replicas=self._replicas,
            duplicate_window=self._duplicate_window,
            max_age=self._max_age,
        )
        async with self._declare_lock:
            try:
                try:
                    info = await jsm.stream_info(name)
                except self._js_errors.NotFoundError:
                    try:
                        info = await jsm.add_stream(config)
                    except self._js_errors.BadRequestError:
                        # Made meanwhile by someone else with other settings; what matters is its subject.
                        info = await jsm.stream_info(name)
            except (self._errors.Error, OSError, TimeoutError) as exc:
                raise self._unavailable(f"declaring stream {name!r}", exc) from exc
            if list(info.config.subjects or ()) != [subject]:
                raise ConfigError(
                    f"NATS stream {name!r} holds subjects {info.config.subjects}, not {subject!r}: topic "
                    f"{topic!r} clashes with another topic or stream of the same name ('.' and '_' both "
                    "map to '_'); rename one of them"
                )
            self._streams.add(name)
        return name

    async def _declare_consumer(self, topic: str, group: str) -> tuple[str, str]:
        stream = await self._declare_stream(topic)
        durable = self.consumer_name(group)
        _, jsm = self._client()
        description = f"mainspring group {group}"
        config = self._api.ConsumerConfig(
            durable_name=durable,
            description=description,
            deliver_policy=self._api.DeliverPolicy.ALL,
            ack_policy=self._api.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            filter_subject=self.subject(topic),
        )
        try:
            try:
                info = await jsm.consumer_info(stream, durable)
            except self._js_errors.NotFoundError:
                info = None
            if info is not None and info.config.description != description:
                raise ConfigError(
                    f"NATS consumer {durable!r} on stream {stream!r} belongs to "
                    f"{info.config.description or 'someone else'!r}, not group {group!r} ('.' and '_' both "
                    "map to '_'); rename the group"
                )
            # Creates the consumer, or updates ack_wait / max_deliver of an existing one.
            await jsm.add_consumer(stream, config)
        except (self._errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(f"declaring consumer {durable!r} on {stream!r}", exc) from exc
        return stream, durable

    async def _redeclare(self, topic: str, group: str) -> None:
        # After a failed fetch: the stream or the consumer may have been deleted; check both again.
        self._streams.discard(self.stream_name(topic))
        await self._declare_consumer(topic, group)

    # --- publish ----------------------------------------------------------------------------------

    def _outgoing(self, record: Record, not_before: str | None) -> tuple[str, bytes, dict[str, str]]:
        headers: dict[str, str] = {}
        checked = _checked_header_names
        for name, value in record.headers.items():
            if name not in checked:
                if not _HEADER_NAME.match(name) or name.lower().startswith(RESERVED_HEADER_PREFIX):
                    raise BadRequestError(
                        f"header name {name!r} cannot travel on NATS: use letters, digits and '-_.' and "
                        "do not start with 'Nats-'"
                    )
                if len(checked) < _MEMO_LIMIT:
                    checked.add(name)
            headers[name] = encode_value(str(value))
        if record.key is not None and CE_PARTITION_KEY not in headers:
            headers[CE_PARTITION_KEY] = encode_value(record.key)
        if not_before is not None:
            headers[NOT_BEFORE] = not_before
        headers[_MSG_ID] = self._msg_id(record)
        return self.subject(record.topic), bytes(record.body), headers

    @staticmethod
    def _msg_id(record: Record) -> str:
        """The de-duplication id: ``ce_id``; for a dead letter also its group and failure time."""
        ce_id = record.headers.get(CE_ID)
        if not ce_id:
            # Without a ce_id, a random id still makes our own re-sends of this call idempotent.
            return secrets.token_hex(16)
        group = record.headers.get(DLQ_GROUP)
        if group is None:
            replayed = record.headers.get(REPLAYED_AT)
            # A dead letter replayed by `mainspring messaging dlq replay` is a new publication.
            return ce_id if replayed is None else f"{ce_id}|replay|{replayed}"
        # Two groups dead-lettering one event, or an event failing again after a replay, are distinct
        # dead letters; with ce_id alone the stream would keep only the first within duplicate_window.
        return f"{ce_id}|{group}|{record.headers.get(DLQ_LAST_FAILURE, '')}"

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Publish in order and wait for every PubAck; retry unconfirmed records until publish_timeout."""
        if not records:
            return
        self._client()
        deadline = time.monotonic() + self._publish_timeout
        not_before = None if delay is None or delay <= 0 else repr(time.time() + delay)
        items = [self._outgoing(r, not_before) for r in records]
        limit = self._nc.max_payload
        too_big = [i for i, (_, body, _) in enumerate(items) if len(body) > limit]
        if too_big:
            raise BadRequestError(
                f"{len(too_big)} record(s) exceed the NATS server's max_payload of {limit} bytes "
                f"(first: #{too_big[0]}, {len(items[too_big[0]][1])} bytes); nothing was published",
                details={"backend": "nats", "operation": "publish"},
            )
        for topic in dict.fromkeys(r.topic for r in records):
            if self.stream_name(topic) not in self._streams:
                await self._declare_until(topic, deadline)
        pending = list(range(len(items)))
        backoff = 0.05
        # Acks lost with a dying connection never come: stop waiting after a while and send again.
        wait = _FIRST_ACK_WAIT
        while True:
            failed, error = await self._send(items, pending, min(deadline, time.monotonic() + wait))
            wait = min(wait * 2, self._request_timeout)
            if not failed:
                return
            if isinstance(error, self._js_errors.NoStreamResponseError):
                # The stream vanished (deleted by an operator): declare it again before re-sending.
                self._streams.clear()
                for topic in dict.fromkeys(records[i].topic for i in failed):
                    await self._declare_until(topic, deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"NATS transport at {self.url}: {len(failed)} of {len(items)} records not confirmed "
                    f"within publish_timeout {self._publish_timeout:g} s "
                    f"({type(error).__name__ if error else 'no ack'})",
                    details={"backend": "nats", "operation": "publish", "unconfirmed": len(failed)},
                ) from error
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 1.0)
            pending = failed

    async def _declare_until(self, topic: str, deadline: float) -> None:
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await self._declare_stream(topic)
                return
            except TimeoutError as exc:
                raise self._unavailable(f"declaring the stream of {topic!r} before publishing", exc) from exc
            except ServiceUnavailableError:
                if time.monotonic() + 0.1 >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _send(
        self, items: list[tuple[str, bytes, dict[str, str]]], indexes: list[int], deadline: float
    ) -> tuple[list[int], BaseException | None]:
        """Send ``indexes`` back to back, await their acks; return the unconfirmed ones (in order)."""
        js, _ = self._client()
        if len(indexes) == 1:
            # One record (the common case): a plain request is cheaper than the async-ack machinery.
            subject, body, headers = items[indexes[0]]
            try:
                # nats-py changes the headers only when given stream= or msg_ttl=: no copy needed.
                await js.publish(
                    subject, body, timeout=max(deadline - time.monotonic(), 0.001), headers=headers
                )
            except (self._errors.Error, OSError, TimeoutError) as exc:
                self._refuse_permanent(exc, subject)
                return indexes, exc
            return [], None
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                for i in indexes:
                    subject, body, headers = items[i]
                    futures.append(await js.publish_async(subject, body, headers=headers))
                await asyncio.wait(futures)
        except (self._errors.Error, OSError, TimeoutError) as exc:
            self._refuse_permanent(exc, "")
            error = exc
        failed: list[int] = []
        for position, i in enumerate(indexes):
            future = futures[position] if position < len(futures) else None
            if future is None or not future.done():
                if future is not None:
                    future.cancel()
                failed.append(i)
                continue
            problem = future.exception()
            if problem is None:
                continue
            self._refuse_permanent(problem, items[i][0])
            error = error or problem
            failed.append(i)
        return failed, error

    def _refuse_permanent(self, problem: BaseException, subject: str) -> None:
        """Raise :class:`BadRequestError` for errors that sending again cannot fix."""
        if isinstance(problem, self._errors.MaxPayloadError):
            raise BadRequestError(
                f"a record is larger than the NATS server's max_payload ({self._nc.max_payload} bytes)",
                details={"backend": "nats", "operation": "publish"},
            ) from problem
        if isinstance(problem, self._js_errors.APIError) and not isinstance(
            problem, self._js_errors.ServiceUnavailableError
        ):
            raise BadRequestError(
                f"NATS rejected a record for {subject!r}: {problem.description} (code {problem.err_code})",
                details={"backend": "nats", "operation": "publish"},
            ) from problem

    # --- consume ----------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> NatsSubscription:
        """Declare the topic's stream, its ``.dlq`` stream and the group's durable pull consumer."""
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"prefetch must be an integer >= 1, got {prefetch!r}")
        js, _ = self._client()
        if not topic.endswith(DLQ_SUFFIX):
            await self._declare_stream(topic + DLQ_SUFFIX)
        stream, durable = await self._declare_consumer(topic, group)
        try:
            psub = await js.pull_subscribe_bind(durable, stream)
        except (self._errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(f"binding consumer {durable!r}", exc) from exc
        subscription = NatsSubscription(
            topic, group, psub, self._errors, lambda: self._redeclare(topic, group)
        )
        self._subscriptions.append(subscription)
        return subscription

    # --- dead letters -----------------------------------------------------------------------------

    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Read up to ``limit`` records of ``topic``'s stream by sequence, oldest first, consuming nothing."""
        if limit < 1:
            return []
        _, jsm = self._client()
        name, subject = self.stream_name(topic), self.subject(topic)
        records: list[Record] = []
        try:
            try:
                info = await jsm.stream_info(name)
            except self._js_errors.NotFoundError:
                return []
            seq = max(1, int(info.state.first_seq))
            while len(records) < limit:
                try:
                    raw = await jsm.get_msg(name, seq=seq, subject=subject, next=True)
                except self._js_errors.NotFoundError:
                    break
                records.append(to_record(topic, raw.data, raw.headers))
                seq = int(raw.seq) + 1
        except (self._errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(f"browsing {topic!r}", exc) from exc
        return records

    async def purge(self, topic: str) -> int:
        """Purge ``topic``'s stream; return how many records the server removed."""
        self._client()
        name = self.stream_name(topic)
        try:
            reply = await self._nc.request(
                f"$JS.API.STREAM.PURGE.{name}", b"{}", timeout=self._request_timeout
            )
        except (self._errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(f"purging {topic!r}", exc) from exc
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is not None:
            if error.get("code") == 404:
                return 0
            raise ServiceUnavailableError(
                f"NATS transport: purging {topic!r} failed: {error.get('description')}",
                details={"backend": "nats", "operation": "purge"},
            )
        return int(answer.get("purged", 0))
