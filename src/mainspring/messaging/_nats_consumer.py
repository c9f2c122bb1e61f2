"""The consuming side of the NATS transport: deliveries, pull subscriptions and the header codec.

Header values NATS headers cannot carry (non-ASCII, control characters such as line breaks, outer
blanks) travel base64-encoded as ``=?utf-8?b?...?=``; a plain value that starts like that is encoded
too, so decoding is exact. Headers whose names start with ``Nats-`` belong to the server and are
dropped from received records.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import ModuleType
from typing import Any

from mainspring.errors import BadRequestError, ServiceUnavailableError
from mainspring.logging import get_logger
from mainspring.messaging._transport import CE_PARTITION_KEY, NOT_BEFORE, Delivery, Record, Subscription

__all__ = ["NatsDelivery", "NatsSubscription", "decode_headers", "encode_value", "to_record"]

log = get_logger("mainspring.messaging")

_ENCODED_START = "=?utf-8?b?"
_ENCODED_END = "?="
RESERVED_HEADER_PREFIX = "nats-"
# A deferred record is given back this much later than due, so it does not come back a hair early.
_DEFER_SLACK = 0.005
# Pause after a failed fetch so that a persistent error does not turn the consumer loop into a spin.
_FETCH_ERROR_PAUSE = 0.5


def encode_value(value: str) -> str:
    """Return ``value`` as a NATS header value (base64 encoded-word when it cannot travel as is)."""
    plain = value.isascii() and value.isprintable() and value == value.strip()
    if plain and not value.startswith(_ENCODED_START):
        return value
    return _ENCODED_START + base64.b64encode(value.encode()).decode() + _ENCODED_END


def _decode_value(value: Any) -> str:
    text = str(value)
    if not (text.startswith(_ENCODED_START) and text.endswith(_ENCODED_END)):
        return text
    try:
        return base64.b64decode(text[len(_ENCODED_START) : -len(_ENCODED_END)], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return text


def decode_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """Return the record headers of a received message: decoded, without the server's ``Nats-*``."""
    if not raw:
        return {}
    return {k: _decode_value(v) for k, v in raw.items() if not k.lower().startswith(RESERVED_HEADER_PREFIX)}


def to_record(topic: str, body: bytes | None, raw_headers: Mapping[str, Any] | None) -> Record:
    """Build the :class:`Record` of a received message (the key comes from ``ce_partitionkey``)."""
    headers = decode_headers(raw_headers)
    return Record(topic, body or b"", headers, headers.get(CE_PARTITION_KEY))


class NatsDelivery(Delivery):
    """A JetStream message handed to a consumer; settled with ack / nak."""

    __slots__ = ("_msg", "_owner")

    def __init__(self, record: Record, msg: Any, owner: NatsSubscription) -> None:
        super().__init__(record)
        self._msg = msg
        self._owner = owner

    @property
    def attempt(self) -> int:
        """The delivery count JetStream keeps, minus the deferral of a record published with a delay."""
        metadata = self._msg.metadata
        delivered = int(metadata.num_delivered)
        raw = self.record.headers.get(NOT_BEFORE)
        if raw is not None:
            try:
                if float(raw) > metadata.timestamp.timestamp() + _DEFER_SLACK:
                    delivered -= 1
            except ValueError:
                pass
        return max(1, delivered)

    async def ack(self) -> None:
        """Acknowledge the message; JetStream will not deliver it to this group again."""
        await self._settle("ack", self._msg.ack())

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """``nak(delay)``: JetStream redelivers the same message (original headers) after ``delay`` s."""
        await self._settle("retry", self._msg.nak(delay=delay if delay > 0 else None))

    async def release(self) -> None:
        """``nak()`` without delay: redelivered at once (JetStream counts it as a delivery)."""
        await self._settle("release", self._msg.nak())

    async def _settle(self, operation: str, call: Coroutine[Any, Any, None]) -> None:
        owner = self._owner
        if owner._closed and self not in owner._outstanding:
            # close() already gave it back; JetStream will hand it out again.
            call.close()
            return
        owner._outstanding.discard(self)
        try:
            await call
        except owner._errors.Error as exc:
            raise ServiceUnavailableError(
                f"NATS transport: {operation} of a message from {self.record.topic!r} failed "
                f"({type(exc).__name__}); it will be redelivered after ack_wait",
                details={"backend": "nats", "operation": operation},
            ) from exc


class NatsSubscription(Subscription):
    """A durable pull consumer (one per group) on the topic's stream."""

    def __init__(
        self,
        topic: str,
        group: str,
        psub: Any,
        errors: ModuleType,
        redeclare: Callable[[], Awaitable[object]],
    ) -> None:
        """Wrap nats-py's pull subscription ``psub``; ``redeclare`` declares the consumer again."""
        self._topic = topic
        self._group = group
        self._psub = psub
        self._errors = errors
        self._redeclare = redeclare
        self._lock = asyncio.Lock()
        self._closed = False
        self._outstanding: set[NatsDelivery] = set()

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[NatsDelivery]:
        """Pull up to ``max_messages``; early delayed records are given back and not returned."""
        if max_messages < 1:
            raise BadRequestError(f"max_messages must be >= 1, got {max_messages}")
        deadline = time.monotonic() + max(timeout, 0.0)
        async with self._lock:
            while not self._closed:
                remaining = max(deadline - time.monotonic(), 0.01)
                msgs = await self._pull(max_messages, remaining)
                ready = [d for d in [await self._accept(m) for m in msgs] if d is not None]
                if self._closed:  # closed while pulling: these were never handed out
                    await self._give_back(ready)
                    break
                if ready or time.monotonic() >= deadline:
                    self._outstanding.update(ready)
                    return ready
        return []

    async def _pull(self, batch: int, timeout: float) -> list[Any]:
        errors = self._errors
        try:
            return list(await self._psub.fetch(batch, timeout=timeout))
        except TimeoutError:
            return []
        except errors.ConnectionClosedError as exc:
            raise ServiceUnavailableError(
                f"NATS transport: the connection is closed; cannot fetch from {self._topic!r}",
                details={"backend": "nats", "operation": "fetch"},
            ) from exc
        except errors.Error as exc:
            if self._closed:
                return []
            # Consumer deleted (409), buffer full during an outage, ...: declare again, pause, go on.
            log.warning(
                "nats fetch failed; declaring the consumer again",
                topic=self._topic,
                group=self._group,
                error=f"{type(exc).__name__}: {exc}",
            )
            try:
                await self._redeclare()
            except ServiceUnavailableError as again:
                log.warning("nats consumer declaration failed", topic=self._topic, error=again.message)
            await asyncio.sleep(min(timeout, _FETCH_ERROR_PAUSE))
            return []

    async def _accept(self, msg: Any) -> NatsDelivery | None:
        record = to_record(self._topic, msg.data, msg.headers)
        raw = record.headers.get(NOT_BEFORE)
        if raw is not None:
            try:
                remaining = float(raw) - time.time()
            except ValueError:
                remaining = 0.0
            if remaining > 0:
                try:
                    await msg.nak(delay=remaining + _DEFER_SLACK)
                except self._errors.Error as exc:
                    # Not given back: JetStream redelivers it after ack_wait, and it is checked again.
                    log.warning("nats deferral failed", topic=self._topic, error=type(exc).__name__)
                return None
        return NatsDelivery(record, msg, self)

    async def close(self) -> None:
        """Give back unsettled deliveries (``nak``) and stop pulling; the durable consumer stays."""
        if self._closed:
            return
        self._closed = True
        pending, self._outstanding = list(self._outstanding), set()
        await self._give_back(pending)
        try:
            await self._psub.unsubscribe()
        except self._errors.Error as exc:
            log.warning("nats unsubscribe failed", topic=self._topic, error=type(exc).__name__)

    async def _give_back(self, deliveries: Sequence[NatsDelivery]) -> None:
        try:
            for delivery in deliveries:
                await delivery._msg.nak()
        except self._errors.Error as exc:
            # The connection is gone: the server redelivers them after ack_wait anyway.
            log.warning("nats could not give messages back", topic=self._topic, error=type(exc).__name__)
