"""``Message``: one event or command with its CloudEvents attributes, and UUIDv7 ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mainspring._ids import uuid7, uuid7_str
from mainspring.errors import BadRequestError

__all__ = ["Message", "event_type_of", "uuid7"]


def event_type_of(model: type) -> str:
    """Return the stable event type name of a payload class.

    A class attribute ``event_type`` wins (``event_type: ClassVar[str] = "orders.placed.v1"``);
    otherwise the class name.
    """
    declared = getattr(model, "event_type", None)
    if isinstance(declared, str) and declared:
        return declared
    return model.__name__


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid7_str()


@dataclass(frozen=True, slots=True)
class Message:
    """A message: the payload (``data``) with its CloudEvents 1.0 attributes.

    ``data`` is anything the codec can encode: a pydantic model, a dict, a list, a str, bytes. ``type``
    defaults to the payload class's ``event_type`` (see :func:`event_type_of`) when the broker builds
    the message from a model. ``key`` orders messages: two messages with the same key are handled in
    publish order (while no retry happens). ``correlation_id`` and ``causation_id`` default to the
    current :mod:`mainspring.context` when published.
    """

    data: Any
    type: str = ""
    id: str = field(default_factory=_new_id)
    source: str = ""
    time: datetime = field(default_factory=_now)
    key: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    #: The topic the message was received from (set on consumed messages).
    topic: str | None = None
    #: The 1-based delivery attempt (set on consumed messages).
    attempt: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise BadRequestError("Message.id must be a non-empty string", code="invalid_message")
        if self.key is not None and not isinstance(self.key, str):
            raise BadRequestError(
                f"Message.key must be a str or None, got {type(self.key).__name__}", code="invalid_message"
            )
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise BadRequestError(
                "Message.time must be a timezone-aware datetime (use datetime.now(UTC))",
                code="invalid_message",
            )
        # The header names and values are checked when the message is encoded (build_record): a
        # received message's headers come from the transport, already strings.
