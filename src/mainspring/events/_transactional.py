"""``TransactionalOutboxEventBus``: domain events that leave the service through the outbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mainspring.events._outbox import Outbox
from mainspring.messaging import Message
from mainspring.messaging.message import event_type_of

__all__ = ["TransactionalOutboxEventBus"]


class TransactionalOutboxEventBus:
    """Publish domain events by adding them to the outbox in the current unit of work.

    The event leaves only if the transaction commits, and then at least once (through
    :class:`~mainspring.events.OutboxRelay`). ``topic`` picks the topic per event: a mapping from
    event class to topic, a function of the event, or one topic for all; by default the event's
    ``event_type``. ``key`` picks the ordering key (a function of the event), none by default.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        topic: str | Mapping[type[Any], str] | Callable[[Any], str] | None = None,
        key: Callable[[Any], str | None] | None = None,
    ) -> None:
        """Route events to topics through ``outbox``."""
        self.outbox = outbox
        self._topic = topic
        self._key = key

    def topic_of(self, event: Any) -> str:
        """Return the topic ``event`` is published to."""
        route = self._topic
        if route is None:
            return event_type_of(type(event))
        if isinstance(route, str):
            return route
        if isinstance(route, Mapping):
            for base in type(event).__mro__:
                if base in route:
                    return route[base]
            return event_type_of(type(event))
        return route(event)

    async def publish(self, event: Any) -> Message:
        """Add ``event`` to the outbox (inside ``async with db.transaction()``); return its message."""
        key = self._key(event) if self._key is not None else None
        return await self.outbox.add(self.topic_of(event), event, key=key)
