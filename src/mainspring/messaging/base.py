"""``Broker``: one publish/subscribe API over any :class:`~mainspring.messaging.Transport`.

The broker owns everything that is the same on every message system: building records from
messages and models (CloudEvents attributes in headers, the current context injected), decoding and
validating payloads for typed handlers, restoring the context around a handler, per-key ordering with
``concurrency`` lanes, delayed retries by :class:`RetryPolicy`, dead letters with the failure's
details, an optional :class:`~mainspring.resilience.CircuitBreaker` that pauses fetching, the
idempotent inbox hook, and a graceful stop that drains in-flight messages and releases the rest.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import math
import re
import time
import traceback
import typing
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import pydantic
from pydantic import BaseModel

from mainspring._lifecycle import AsyncLifecycle
from mainspring.context import RequestContext, get_context, parse_traceparent, reset_context, set_context
from mainspring.errors import BadRequestError, ConfigError
from mainspring.logging import get_logger
from mainspring.messaging._codecs import Codec, InvalidPayloadError, JsonCodec, MsgpackCodec
from mainspring.messaging._retry import RetryPolicy
from mainspring.messaging._transport import (
    ATTEMPT,
    CE_CAUSATION_ID,
    CE_CORRELATION_ID,
    CE_ID,
    CE_PARTITION_KEY,
    CE_SOURCE,
    CE_SPECVERSION,
    CE_TIME,
    CE_TRACEPARENT,
    CE_TRACESTATE,
    CE_TYPE,
    CONTENT_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_FIRST_FAILURE,
    DLQ_GROUP,
    DLQ_LAST_FAILURE,
    DLQ_REASON,
    DLQ_SUFFIX,
    DLQ_TOPIC,
    DLQ_TRACEBACK,
    Delivery,
    Record,
    Subscription,
    Transport,
)
from mainspring.messaging.message import Message, event_type_of
from mainspring.resilience import CircuitBreaker, CircuitOpenError, CircuitState

__all__ = ["Broker", "BrokerStats", "Inbox", "SubscriberInfo", "as_message", "build_record"]

log = get_logger("mainspring.messaging")

F = TypeVar("F", bound=Callable[..., Any])
#: ``observer(topic, group, outcome, handler_seconds)``; see :attr:`Broker.observer`.
Observer = Callable[[str, str, str, float | None], None]

_TOPIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_CE_ATTRIBUTES = frozenset(
    {CE_SPECVERSION, CE_ID, CE_TYPE, CE_SOURCE, CE_TIME, CE_CORRELATION_ID, CE_CAUSATION_ID, CONTENT_TYPE}
)
_TRACEBACK_FRAMES = 5
_JSON = JsonCodec()
_ERROR_MESSAGE_LIMIT = 2000
_DEFAULT_PREFETCH = 100
# A default prefetch holds about this many seconds of handler work per lane (by the handler's
# average run time), never less than 2 deliveries per lane.
_AHEAD_SECONDS = 1.0
_PACE_WEIGHT = 0.2  # weight of the latest run time in the moving average


class Inbox(Protocol):
    """What ``inbox=True`` subscribers use to run a handler at most once per message id and consumer.

    :class:`mainspring.events.Inbox` implements it on the database: it records ``message.id`` for
    ``consumer`` in the same transaction as the handler's own writes.
    """

    async def process(
        self, message: Message, consumer: str, handler: Callable[[], Awaitable[object]]
    ) -> bool:
        """Run ``handler`` unless ``message`` was already processed by ``consumer``; return whether it ran."""
        ...


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic name, else raise :class:`BadRequestError`."""
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic):
        raise BadRequestError(
            f"invalid topic {topic!r}: use 1-200 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
            code="invalid_topic",
        )
    return topic


def _check_group(group: str) -> str:
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise ConfigError(
            f"invalid consumer group {group!r}: use 1-100 characters of letters, digits, '_' and '-'"
        )
    return group


def _default_group(handler: Callable[..., Any]) -> str:
    name = f"{getattr(handler, '__module__', 'handler')}.{getattr(handler, '__qualname__', 'handler')}"
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name.replace(".", "-")).strip("_-")
    return cleaned[:100] or "handler"


def _utc_now_text() -> str:
    return datetime.now(UTC).isoformat()


def _parse_time(text: str | None) -> datetime:
    if text:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return datetime.now(UTC)


def _traceback_summary(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)[-_TRACEBACK_FRAMES:]
    return " <- ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in reversed(frames))


@dataclass(slots=True)
class BrokerStats:
    """Counters since the broker was made."""

    published: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates_skipped: int = 0
    released: int = 0


# How a handler wants its argument: the Message, a validated model (and maybe the Message), the raw
# bytes, or the decoded plain value.
_ARG_MESSAGE = "message"
_ARG_MODEL = "model"
_ARG_BYTES = "bytes"
_ARG_DATA = "data"


@dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """A registered subscriber, as :meth:`Broker.subscribers` lists it."""

    topic: str
    group: str
    handler: Callable[..., Any]
    concurrency: int
    retry: RetryPolicy
    dlq: bool
    inbox: bool
    breaker: CircuitBreaker | None
    payload_type: type[BaseModel] | None = None
    arg_kind: str = _ARG_MESSAGE
    also_message: bool = False
    is_async: bool = True
    prefetch: int = 0
    #: False when ``prefetch`` is the default ceiling, which the subscriber lowers while its handler
    #: is slow (see :meth:`Broker.add_subscriber`).
    fixed_prefetch: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


_KNOWN_ANNOTATIONS: dict[str, Any] = {"Message": Message, "bytes": bytes, "Any": Any}


def _inspect_handler(handler: Callable[..., Any]) -> tuple[str, type[BaseModel] | None, bool]:
    try:
        hints = typing.get_type_hints(handler)
    except (NameError, TypeError) as exc:
        # Postponed annotations naming something only the handler's enclosing function imported:
        # the message types we know by name still work; anything else needs a module-level import.
        hints = {}
        for name, value in getattr(handler, "__annotations__", {}).items():
            if name == "return":
                continue
            known = _KNOWN_ANNOTATIONS.get(value.rsplit(".", 1)[-1]) if isinstance(value, str) else value
            if known is None:
                raise ConfigError(
                    f"cannot resolve the type hint {value!r} of handler {handler!r} ({exc}); import the "
                    "type at module level"
                ) from exc
            hints[name] = known
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise ConfigError(
            f"handler {handler!r} must take one argument (the payload or the Message), or two "
            "(a payload model and the Message)"
        )
    first = hints.get(params[0].name, Message)
    also_message = len(params) == 2
    if also_message and hints.get(params[1].name, Message) is not Message:
        raise ConfigError(f"the second argument of handler {handler!r} must be annotated as Message")
    if first is Message or first is Any:
        if also_message:
            raise ConfigError(f"handler {handler!r} takes the Message twice")
        return _ARG_MESSAGE, None, False
    if isinstance(first, type) and issubclass(first, BaseModel):
        return _ARG_MODEL, first, also_message
    if first is bytes:
        return _ARG_BYTES, None, also_message
    return _ARG_DATA, None, also_message


def as_message(item: Any, key: str | None = None) -> Message:
    """Return ``item`` as a :class:`Message`: a model gets its ``event_type``, plain data is wrapped."""
    if isinstance(item, Message):
        if key is not None and item.key != key:
            raise BadRequestError(
                "publish(key=...) conflicts with Message.key; set one of them", code="invalid_message"
            )
        return item
    if isinstance(item, BaseModel):
        return Message(data=item, type=event_type_of(type(item)), key=key)
    return Message(data=item, key=key)


def build_record(
    topic: str,
    message: Message,
    *,
    headers: Mapping[str, str] | None = None,
    codec: Codec | None = None,
    source: str = "mainspring",
) -> Record:
    """Encode ``message`` for ``topic``.

    The body comes from ``codec`` (JSON by default); the CloudEvents attributes and the current
    :mod:`mainspring.context` (correlation, causation, trace) go into headers.
    """
    codec = codec or _JSON
    body, codec_headers = codec.encode(message.data)
    ctx = get_context()
    out: dict[str, str] = dict(message.headers)
    for name, value in out.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise BadRequestError(
                f"Message.headers must map str to str, got {name!r}: {value!r}", code="invalid_message"
            )
    if headers:
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise BadRequestError(
                    f"message headers must map str to str, got {name!r}: {value!r}",
                    code="invalid_message",
                )
            out[name] = value
    out.update(codec_headers)
    out[CE_SPECVERSION] = "1.0"
    out[CE_ID] = message.id
    out[CE_TYPE] = message.type or topic
    out[CE_SOURCE] = message.source or source
    out[CE_TIME] = message.time.isoformat()
    out[CONTENT_TYPE] = message.content_type or codec.content_type
    correlation = message.correlation_id or ctx.correlation_id or message.id
    out[CE_CORRELATION_ID] = correlation
    causation = message.causation_id or ctx.causation_id
    if causation:
        out[CE_CAUSATION_ID] = causation
    if message.key is not None:
        out[CE_PARTITION_KEY] = message.key
    if ctx.trace_id is not None and CE_TRACEPARENT not in out:
        span = ctx.span_id or "0000000000000001"
        out[CE_TRACEPARENT] = f"00-{ctx.trace_id}-{span}-{ctx.trace_flags or '01'}"
        if ctx.tracestate:
            out[CE_TRACESTATE] = ctx.tracestate
    return Record(topic=topic, body=body, headers=out, key=message.key)


class Broker(AsyncLifecycle):
    """Publish messages and run subscribers over one :class:`Transport`.

    ::

        broker = create_broker("redis://localhost:6379/0")

        @broker.subscriber("orders", group="billing", concurrency=4, retry=RetryPolicy(max_attempts=5))
        async def on_order(event: OrderPlaced) -> None: ...

        async with broker:
            await broker.publish("orders", OrderPlaced(order_id=1), key="customer-7")
    """

    def __init__(
        self,
        transport: Transport,
        *,
        codec: Codec | None = None,
        codecs: Iterable[Codec] = (),
        source: str = "mainspring",
        inbox: Inbox | None = None,
        fetch_timeout: float = 1.0,
        drain_timeout: float = 10.0,
        observer: Observer | None = None,
    ) -> None:
        """Use ``transport``; ``codec`` encodes what we publish (JSON by default).

        ``codecs`` are extra codecs for decoding, chosen by each record's ``content-type`` (JSON and,
        when msgpack is installed, msgpack are always known). ``source`` is the CloudEvents ``source``
        of our messages (usually the service name). ``inbox`` serves subscribers made with
        ``inbox=True``. ``observer(topic, group, outcome, seconds)`` hears every settled delivery's
        outcome (``handled``, ``retried``, ``dead_lettered``, ``duplicate``, ``released``, ``failed``).
        """
        if not isinstance(transport, Transport):
            raise ConfigError(
                f"Broker needs a mainspring.messaging.Transport, got {type(transport).__name__}"
            )
        if not math.isfinite(fetch_timeout) or fetch_timeout <= 0:
            raise ConfigError(f"fetch_timeout must be > 0 seconds, got {fetch_timeout!r}")
        self.transport = transport
        self.codec: Codec = codec or JsonCodec()
        self._decoders: dict[str, Codec] = {JsonCodec.content_type: JsonCodec()}
        if importlib.util.find_spec("msgpack") is not None:
            self._decoders[MsgpackCodec.content_type] = MsgpackCodec()
        for extra in (self.codec, *codecs):
            self._decoders[extra.content_type] = extra
        self.source = source
        self.inbox = inbox
        self.fetch_timeout = fetch_timeout
        self.drain_timeout = drain_timeout
        self.stats = BrokerStats()
        #: Called as ``observer(topic, group, outcome, handler_seconds)`` once per settled delivery;
        #: the runtime points it at ``mainspring.observability.record_message``.
        self.observer: Observer | None = observer
        self._subscribers: list[SubscriberInfo] = []
        self._runners: list[_Runner] = []
        self._started = False

    # -- publishing -------------------------------------------------------------------------------

    def _record(self, topic: str, message: Message, headers: Mapping[str, str] | None) -> Record:
        return build_record(topic, message, headers=headers, codec=self.codec, source=self.source)

    @staticmethod
    def _check_delay(delay: float | None) -> float | None:
        if delay is None:
            return None
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise BadRequestError(
                f"delay must be a number of seconds >= 0, got {delay!r}", code="invalid_delay"
            )
        return float(delay) or None

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> Message:
        """Publish one message (a :class:`Message`, a pydantic model, or plain data) and return it.

        Returns once the broker has confirmed it. ``key`` orders messages; ``delay`` (seconds) holds
        it back. Raises :class:`~mainspring.errors.ServiceUnavailableError` when the broker cannot take
        it within the transport's ``publish_timeout``.
        """
        check_topic(topic)
        wait = self._check_delay(delay)
        msg = as_message(message, key)
        await self.transport.publish([self._record(topic, msg, headers)], delay=wait)
        self.stats.published += 1
        return msg

    async def publish_batch(
        self,
        topic: str,
        messages: Iterable[Any],
        *,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> list[Message]:
        """Publish several messages in order with one round trip where the broker allows; return them."""
        check_topic(topic)
        wait = self._check_delay(delay)
        built = [as_message(item, None) for item in messages]
        if not built:
            return []
        await self.transport.publish([self._record(topic, m, headers) for m in built], delay=wait)
        self.stats.published += len(built)
        return built

    async def publish_record(self, record: Record, *, delay: float | None = None) -> None:
        """Publish an already encoded :class:`Record` as is (the outbox relay and DLQ replay use this)."""
        check_topic(record.topic)
        await self.transport.publish([record], delay=self._check_delay(delay))
        self.stats.published += 1

    # -- subscribing ------------------------------------------------------------------------------

    def subscriber(
        self,
        topic: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: RetryPolicy | None = None,
        dlq: bool = True,
        inbox: bool = False,
        breaker: CircuitBreaker | None = None,
        prefetch: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a handler of ``topic`` (see :meth:`add_subscriber`)."""

        def register(handler: F) -> F:
            self.add_subscriber(
                topic,
                handler,
                group=group,
                concurrency=concurrency,
                retry=retry,
                dlq=dlq,
                inbox=inbox,
                breaker=breaker,
                prefetch=prefetch,
            )
            return handler

        return register

    def add_subscriber(
        self,
        topic: str,
        handler: Callable[..., Any],
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: RetryPolicy | None = None,
        dlq: bool = True,
        inbox: bool = False,
        breaker: CircuitBreaker | None = None,
        prefetch: int | None = None,
    ) -> SubscriberInfo:
        """Register ``handler`` for ``topic`` in consumer ``group``.

        - The handler's first argument's annotation says what it gets: a pydantic model (validated; an
          invalid payload goes to the dead letters at once), :class:`Message`, ``bytes``, or anything
          else for the decoded value. A second argument annotated :class:`Message` gets the message.
          Sync handlers run in a worker thread.
        - ``group``: the consumer group; instances with the same group share the work. Defaults to
          the handler's qualified name.
        - ``concurrency``: handlers in flight at once; messages with the same key stay in order.
        - ``retry``: the :class:`RetryPolicy` (default: 5 attempts, 1 s backoff doubling).
        - ``dlq``: send exhausted and non-retryable messages to ``<topic>.dlq`` (else log and drop).
        - ``inbox``: run the handler at most once per message id through the broker's ``inbox``.
        - ``breaker``: while it is open the subscriber stops fetching; handler failures feed it.
        - ``prefetch``: most deliveries fetched ahead and not yet settled. By default up to
          ``max(100, 2 * concurrency)``, and fewer while the handler is slow: about a second of work
          per lane (never fewer than ``2 * concurrency``), so that fetched messages do not wait long
          enough for the transport to hand them to another consumer (Redis ``claim_idle``, NATS
          ``ack_wait``). Where the broker pushes messages into a window of its own (RabbitMQ's
          QoS), that window stays ``2 * concurrency``. A number given is used as is (window
          included). More is fetched once half of it is settled.
        """
        check_topic(topic)
        if topic.endswith(DLQ_SUFFIX):
            log.info("subscribing to a dead-letter topic", topic=topic)
        if not callable(handler):
            raise ConfigError(f"handler must be callable, got {handler!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < concurrency):
            raise ConfigError(f"prefetch must be an int >= concurrency ({concurrency}), got {prefetch!r}")
        if inbox and self.inbox is None:
            raise ConfigError("inbox=True needs a Broker(..., inbox=Inbox(database)) to record message ids")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigError(f"breaker must be a mainspring.resilience.CircuitBreaker, got {breaker!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {retry!r}")
        group_name = _check_group(group) if group is not None else _default_group(handler)
        for existing in self._subscribers:
            if existing.topic == topic and existing.group == group_name:
                raise ConfigError(
                    f"topic {topic!r} already has a subscriber in group {group_name!r}; "
                    "use another group or one handler"
                )
        arg_kind, payload_type, also_message = _inspect_handler(handler)
        info = SubscriberInfo(
            topic=topic,
            group=group_name,
            handler=handler,
            concurrency=concurrency,
            retry=retry or RetryPolicy(),
            dlq=dlq,
            inbox=inbox,
            breaker=breaker,
            payload_type=payload_type,
            arg_kind=arg_kind,
            also_message=also_message,
            is_async=inspect.iscoroutinefunction(handler),
            prefetch=prefetch or max(_DEFAULT_PREFETCH, 2 * concurrency),
            fixed_prefetch=prefetch is not None,
        )
        self._subscribers.append(info)
        return info

    def subscribers(self) -> list[SubscriberInfo]:
        """Return the registered subscribers."""
        return list(self._subscribers)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the transport and start every subscriber (idempotent)."""
        if self._started:
            return
        await self.transport.start()
        self._started = True
        try:
            for info in self._subscribers:
                runner = _Runner(self, info)
                await runner.start()
                self._runners.append(runner)
        except BaseException:
            await self.stop(drain_timeout=0)
            raise

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish within ``drain_timeout``, release the rest.

        Deliveries fetched but not started are released at once; handlers still running at the
        deadline are cancelled and their messages released for redelivery. Acks of handled messages
        still on their way (a transport may send them in the background, see
        ``Subscription.batch_acks``) are awaited, then the transport closes. Safe to call twice.
        """
        if not self._started:
            return
        wait = self.drain_timeout if drain_timeout is None else drain_timeout
        runners, self._runners = self._runners, []
        try:
            await asyncio.gather(*(runner.stop(wait) for runner in runners))
        finally:
            self._started = False
            await self.transport.stop()

    # -- consuming --------------------------------------------------------------------------------

    def _decode(self, info: SubscriberInfo, delivery: Delivery) -> tuple[Message | None, tuple[Any, ...]]:
        """Return the message (None when neither the handler nor the inbox sees it) and the arguments."""
        record = delivery.record
        headers = record.headers
        content_type = headers.get(CONTENT_TYPE, JsonCodec.content_type)
        codec = self._decoders.get(content_type)
        if codec is None:
            raise InvalidPayloadError(f"no codec for content type {content_type!r}")
        data: Any
        if info.arg_kind == _ARG_BYTES:
            data = record.body
        elif info.payload_type is not None:
            try:
                if content_type == JsonCodec.content_type:
                    data = info.payload_type.model_validate_json(record.body)
                else:
                    data = info.payload_type.model_validate(codec.decode(record.body, headers))
            except pydantic.ValidationError as exc:
                raise InvalidPayloadError(
                    f"payload does not validate as {info.payload_type.__name__}: "
                    f"{exc.error_count()} error(s)",
                    errors=[
                        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
                    ],
                ) from exc
        else:
            data = codec.decode(record.body, headers)
        if info.arg_kind != _ARG_MESSAGE and not info.also_message and not info.inbox:
            return None, (data,)  # the per-message cost of a Message nobody looks at is saved
        message = Message(
            data=data,
            type=headers.get(CE_TYPE, ""),
            id=headers.get(CE_ID) or "unknown",
            source=headers.get(CE_SOURCE, ""),
            time=_parse_time(headers.get(CE_TIME)),
            key=record.key if record.key is not None else headers.get(CE_PARTITION_KEY),
            correlation_id=headers.get(CE_CORRELATION_ID),
            causation_id=headers.get(CE_CAUSATION_ID),
            headers={k: v for k, v in headers.items() if k not in _CE_ATTRIBUTES},
            content_type=content_type,
            topic=record.topic,
            attempt=delivery.attempt,
        )
        if info.arg_kind == _ARG_MESSAGE:
            return message, (message,)
        return message, ((data, message) if info.also_message else (data,))

    async def _dead_letter(
        self, info: SubscriberInfo, delivery: Delivery, error: BaseException, reason: str
    ) -> None:
        record = delivery.record
        if not info.dlq:
            log.error(
                "message dropped after failing; dead letters are off for this subscriber",
                topic=info.topic,
                group=info.group,
                message_id=record.headers.get(CE_ID),
                reason=reason,
                error=f"{type(error).__name__}: {error}",
            )
            await delivery.ack()
            self._observe(info, "failed", None)
            return
        now = _utc_now_text()
        headers = dict(record.headers)
        headers[ATTEMPT] = str(delivery.attempt)
        headers[DLQ_TOPIC] = info.topic
        headers[DLQ_GROUP] = info.group
        headers[DLQ_REASON] = reason
        headers[DLQ_ERROR_TYPE] = f"{type(error).__module__}.{type(error).__qualname__}"
        headers[DLQ_ERROR_MESSAGE] = str(error)[:_ERROR_MESSAGE_LIMIT]
        headers[DLQ_TRACEBACK] = _traceback_summary(error)[:_ERROR_MESSAGE_LIMIT]
        headers.setdefault(DLQ_FIRST_FAILURE, now)
        headers[DLQ_LAST_FAILURE] = now
        await self.transport.publish(
            [Record(topic=info.topic + DLQ_SUFFIX, body=record.body, headers=headers, key=record.key)]
        )
        await delivery.ack()
        self.stats.dead_lettered += 1
        self._observe(info, "dead_lettered", None)
        log.error(
            "message sent to the dead-letter topic",
            topic=info.topic,
            group=info.group,
            message_id=record.headers.get(CE_ID),
            attempt=delivery.attempt,
            reason=reason,
            error=f"{type(error).__name__}: {error}",
        )

    async def _failed(self, info: SubscriberInfo, delivery: Delivery, error: Exception) -> None:
        self.stats.failed += 1
        attempt = delivery.attempt
        if not info.retry.is_retryable(error):
            await self._dead_letter(info, delivery, error, "non_retryable")
            return
        if attempt >= info.retry.max_attempts:
            await self._dead_letter(info, delivery, error, "exhausted")
            return
        delay = info.retry.delay(attempt)
        now = _utc_now_text()
        headers = dict(delivery.record.headers)
        headers[ATTEMPT] = str(attempt + 1)
        headers.setdefault(DLQ_FIRST_FAILURE, now)
        headers[DLQ_LAST_FAILURE] = now
        await delivery.retry(delay, headers)
        self.stats.retried += 1
        self._observe(info, "retried", None)
        log.warning(
            "message handler failed; retrying later",
            topic=info.topic,
            group=info.group,
            message_id=delivery.record.headers.get(CE_ID),
            attempt=attempt,
            retry_in=round(delay, 3),
            error=f"{type(error).__name__}: {error}",
        )

    async def _call_handler(self, info: SubscriberInfo, args: tuple[Any, ...]) -> None:
        if info.is_async:
            await info.handler(*args)
        else:
            await asyncio.to_thread(info.handler, *args)

    def _acked(self, info: SubscriberInfo, seconds: float) -> None:
        """Count a delivery acked after its handler ran for ``seconds`` (< 0: a duplicate skipped)."""
        self.stats.handled += 1
        if seconds >= 0:
            self._observe(info, "handled", seconds)

    async def _run(self, info: SubscriberInfo, delivery: Delivery) -> float | None:
        """Decode and run one delivery; settle it unless the handler succeeded (one settle call each).

        Returns None when the delivery is settled (retried, dead-lettered, released); else the
        handler's run time in seconds (-1.0 for a duplicate the inbox skipped), and the delivery is
        still to be acked (then counted with :meth:`_acked`).
        """
        try:
            message, args = self._decode(info, delivery)
        except InvalidPayloadError as exc:
            self.stats.failed += 1
            await self._dead_letter(info, delivery, exc, exc.code)
            return None
        permit = None
        if info.breaker is not None:
            try:
                permit = info.breaker.acquire()
            except CircuitOpenError:
                await self._release(delivery, info)
                return None
        headers = delivery.record.headers
        if message is not None:
            message_id, correlation = message.id, message.correlation_id
        else:  # as _decode would have set them
            message_id, correlation = headers.get(CE_ID) or "unknown", headers.get(CE_CORRELATION_ID)
        traceparent = headers.get(CE_TRACEPARENT)
        trace = parse_traceparent(traceparent) if traceparent is not None else None
        context = RequestContext(
            correlation_id=correlation or message_id,
            causation_id=message_id,
            trace_id=trace[0] if trace is not None else None,
            span_id=trace[1] if trace is not None else None,
            trace_flags=trace[2] if trace is not None else None,
        )
        token = set_context(context)
        began = time.perf_counter()
        duplicate = False
        try:
            if info.inbox:
                assert self.inbox is not None  # checked at registration
                assert message is not None  # _decode builds it for inbox subscribers
                ran = await self.inbox.process(message, info.group, lambda: self._call_handler(info, args))
                if not ran:
                    self.stats.duplicates_skipped += 1
                    self._observe(info, "duplicate", None)
                    duplicate = True
            elif info.is_async:
                await info.handler(*args)
            else:
                await asyncio.to_thread(info.handler, *args)
        except asyncio.CancelledError:
            if permit is not None:
                permit.release()
            await asyncio.shield(self._release(delivery, info))
            raise
        except InvalidPayloadError as exc:  # a handler may validate further
            if permit is not None:
                permit.record(None)
            self.stats.failed += 1
            await self._dead_letter(info, delivery, exc, exc.code)
            return None
        except Exception as exc:  # noqa: BLE001 - the handler's failure is data: retry or dead-letter it
            if permit is not None:
                permit.record(exc)
            await self._failed(info, delivery, exc)
            return None
        finally:
            reset_context(token)
        if permit is not None:
            permit.record(None)
        return -1.0 if duplicate else time.perf_counter() - began

    async def _release(self, delivery: Delivery, info: SubscriberInfo | None = None) -> None:
        await delivery.release()
        self.stats.released += 1
        if info is not None:
            self._observe(info, "released", None)

    def _observe(self, info: SubscriberInfo, outcome: str, seconds: float | None) -> None:
        observer = self.observer
        if observer is not None:
            try:
                observer(info.topic, info.group, outcome, seconds)
            except Exception as exc:  # noqa: BLE001 - metrics must never fail message handling
                log.warning("message observer failed", error=f"{type(exc).__name__}: {exc}")


class _Runner:
    """The fetch loop and the handler lanes of one subscriber."""

    def __init__(self, broker: Broker, info: SubscriberInfo) -> None:
        self.broker = broker
        self.info = info
        self.subscription: Subscription | None = None
        self.lanes: list[asyncio.Queue[Delivery | None]] = []
        self.lane_tasks: list[asyncio.Task[None]] = []
        self.fetch_task: asyncio.Task[None] | None = None
        # Deliveries fetched and not yet settled (queued, in a handler, or waiting for their ack).
        self.outstanding = 0
        # How many may be outstanding: ``prefetch``, or with a default prefetch what the handler's
        # pace allows (see Broker.add_subscriber). The fetch loop waits until no more than half of it
        # is outstanding, then fills up: fewer, larger fetches than topping up one at a time.
        self.floor = min(info.prefetch, 2 * info.concurrency)
        self.limit = info.prefetch if info.fixed_prefetch else self.floor
        self.refill_at = self.limit // 2
        self.pace = -1.0  # moving average of the handler's run time in seconds (-1: none yet)
        self.space = asyncio.Event()
        self.round_robin = itertools.cycle(range(info.concurrency))
        # With Subscription.batch_acks, handled deliveries waiting for their ack: the lanes go on
        # with the next messages while one acker task acks what has gathered in one
        # Subscription.ack_many call, then what gathered meanwhile. At most ``prefetch`` (each is
        # outstanding); the acker is awaited before the subscription closes.
        self.to_ack: list[tuple[Delivery, float]] = []
        self.acker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        info = self.info
        # What a transport holds on its own (RabbitMQ's QoS window, which the broker fills whatever
        # the handler's pace) stays at the floor unless a prefetch was given; more is only fetched.
        window = info.prefetch if info.fixed_prefetch else self.floor
        self.subscription = await self.broker.transport.subscribe(info.topic, info.group, prefetch=window)
        self.lanes = [asyncio.Queue() for _ in range(info.concurrency)]
        self.lane_tasks = [
            asyncio.create_task(self._lane(queue), name=f"mainspring-sub-{info.topic}-{info.group}-{i}")
            for i, queue in enumerate(self.lanes)
        ]
        self.fetch_task = asyncio.create_task(self._fetch_loop(), name=f"mainspring-fetch-{info.topic}")

    def _lane_of(self, delivery: Delivery) -> int:
        count = len(self.lanes)
        if count == 1:
            return 0
        key = delivery.record.key or delivery.record.headers.get(CE_PARTITION_KEY)
        if key is None:
            return next(self.round_robin)
        return zlib.crc32(key.encode()) % count

    async def _wait_for_breaker(self, breaker: CircuitBreaker) -> bool:
        """Return True when fetching may go on (at most one probe while half-open)."""
        state = breaker.state
        if state is CircuitState.OPEN:
            await asyncio.sleep(min(1.0, max(0.05, breaker.open_duration / 20)))
            return False
        if state is CircuitState.HALF_OPEN and self.outstanding > 0:
            await asyncio.sleep(0.05)
            return False
        return True

    async def _fetch_loop(self) -> None:
        info = self.info
        assert self.subscription is not None
        failures = 0
        while True:
            if info.breaker is not None and not await self._wait_for_breaker(info.breaker):
                continue
            if not info.fixed_prefetch and self.pace >= 0:
                ahead = info.concurrency * _AHEAD_SECONDS / max(self.pace, 1e-6)
                self.limit = max(self.floor, min(info.prefetch, int(ahead)))
                self.refill_at = self.limit // 2
            if self.outstanding > self.refill_at:
                self.space.clear()
                await self.space.wait()
                continue
            free = self.limit - self.outstanding
            if info.breaker is not None and info.breaker.state is CircuitState.HALF_OPEN:
                free = 1
            try:
                deliveries = await self.subscription.fetch(free, self.broker.fetch_timeout)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a failed fetch; logged, retried
                failures += 1
                pause = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "message fetch failed; trying again",
                    topic=info.topic,
                    group=info.group,
                    retry_in=pause,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            for delivery in deliveries:
                self.outstanding += 1
                self.lanes[self._lane_of(delivery)].put_nowait(delivery)

    def _settled(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= self.refill_at:
            self.space.set()

    def _settle_failed(self, delivery: Delivery, exc: Exception) -> None:
        # Settling failed (the broker went away after the handler ran): the transport will
        # redeliver the message; the lane keeps going.
        log.error(
            "could not settle a message; it will be redelivered",
            topic=self.info.topic,
            group=self.info.group,
            message_id=delivery.record.headers.get(CE_ID),
            error=f"{type(exc).__name__}: {exc}",
        )

    async def _ack_loop(self) -> None:
        assert self.subscription is not None
        try:
            while self.to_ack:
                batch, self.to_ack = self.to_ack, []
                outcomes: list[Exception | None]
                try:
                    outcomes = await self.subscription.ack_many([delivery for delivery, _ in batch])
                except Exception as exc:  # noqa: BLE001 - logged per message below; they are redelivered
                    outcomes = [exc] * len(batch)
                for (delivery, seconds), outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        self.broker._acked(self.info, seconds)
                    else:
                        self._settle_failed(delivery, outcome)
                    self._settled()
        finally:
            self.acker = None

    async def _lane(self, queue: asyncio.Queue[Delivery | None]) -> None:
        run, info = self.broker._run, self.info
        assert self.subscription is not None
        in_background = self.subscription.batch_acks
        while True:
            delivery = await queue.get()
            if delivery is None:
                return
            try:
                handled = await run(info, delivery)
            except Exception as exc:  # noqa: BLE001 - a lane must outlive any one message
                self._settle_failed(delivery, exc)
                self._settled()
                continue
            except BaseException:
                self._settled()
                raise
            if handled is None:
                self._settled()
                continue
            if handled >= 0:
                pace = self.pace
                self.pace = handled if pace < 0 else pace + (handled - pace) * _PACE_WEIGHT
            if not in_background:
                try:
                    await delivery.ack()
                except Exception as exc:  # noqa: BLE001 - logged; the transport redelivers the message
                    self._settle_failed(delivery, exc)
                else:
                    self.broker._acked(info, handled)
                finally:
                    self._settled()
                continue
            self.to_ack.append((delivery, handled))
            if self.acker is None:
                self.acker = asyncio.create_task(
                    self._ack_loop(), name=f"mainspring-ack-{info.topic}-{info.group}"
                )

    async def stop(self, drain_timeout: float) -> None:
        if self.fetch_task is not None:
            self.fetch_task.cancel()
            await asyncio.gather(self.fetch_task, return_exceptions=True)
        released: list[Delivery] = []
        for queue in self.lanes:
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    released.append(item)
            queue.put_nowait(None)
        for delivery in released:
            self.outstanding -= 1
            await self.broker._release(delivery, self.info)
        started = time.monotonic()
        if self.lane_tasks:
            _done, pending = await asyncio.wait(self.lane_tasks, timeout=max(0.0, drain_timeout))
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "handlers still running at the drain deadline were cancelled; their messages go back",
                    topic=self.info.topic,
                    group=self.info.group,
                    cancelled=len(pending),
                    waited=round(time.monotonic() - started, 3),
                )
                await asyncio.gather(*pending, return_exceptions=True)
        while (acker := self.acker) is not None:  # what was handled is acked before closing
            await asyncio.wait([acker])
        if self.subscription is not None:
            await self.subscription.close()


def dead_letter_topic(topic: str) -> str:
    """Return the dead-letter topic of ``topic``."""
    return check_topic(topic) + DLQ_SUFFIX


def original_headers(record: Record) -> dict[str, str]:
    """Return ``record``'s headers without the dead-letter and attempt headers (for a replay)."""
    return {k: v for k, v in record.headers.items() if k != ATTEMPT and not k.startswith("ms_dlq_")}
