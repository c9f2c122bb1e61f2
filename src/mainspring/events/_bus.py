"""``EventBus``: in-process publish/subscribe of typed domain events."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mainspring.errors import ConfigError
from mainspring.logging import get_logger
from mainspring.messaging.message import event_type_of

__all__ = ["EventBus", "EventBusStats"]

log = get_logger("mainspring.events")

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[object] | object]


@dataclass(slots=True)
class EventBusStats:
    """Counters since the bus was made."""

    published: int = 0
    delivered: int = 0
    failed: int = 0


class EventBus:
    """Deliver events to the handlers subscribed to their type (or a base class of it), in process.

    Handlers may be sync or async and run one after another in subscription order. A failing
    handler is logged and counted (``stats.failed``) and does not stop the others; :meth:`publish`
    returns the number of handlers that succeeded.

    ::

        bus = EventBus()
        bus.subscribe(OrderPlaced, send_confirmation_mail)
        await bus.publish(OrderPlaced(order_id=1))
    """

    def __init__(self) -> None:
        """Start with no subscribers."""
        self._handlers: dict[type[Any], list[Handler]] = {}
        self._resolved: dict[type[Any], tuple[Handler, ...]] = {}
        self.stats = EventBusStats()

    def subscribe(self, event_type: type[E], handler: Callable[[E], Any]) -> Callable[[], None]:
        """Call ``handler(event)`` for every published ``event_type`` (subclasses included).

        Returns a function that unsubscribes the handler.
        """
        if not isinstance(event_type, type):
            raise ConfigError(f"subscribe() needs an event class, got {event_type!r}")
        if not callable(handler):
            raise ConfigError(f"handler must be callable, got {handler!r}")
        self._handlers.setdefault(event_type, []).append(handler)
        self._resolved.clear()

        def unsubscribe() -> None:
            handlers = self._handlers.get(event_type, [])
            if handler in handlers:
                handlers.remove(handler)
                self._resolved.clear()

        return unsubscribe

    def handler(self, event_type: type[E]) -> Callable[[Callable[[E], Any]], Callable[[E], Any]]:
        """Decorator form of :meth:`subscribe`."""

        def register(fn: Callable[[E], Any]) -> Callable[[E], Any]:
            self.subscribe(event_type, fn)
            return fn

        return register

    def _handlers_for(self, event_type: type[Any]) -> tuple[Handler, ...]:
        found = self._resolved.get(event_type)
        if found is None:
            found = tuple(h for base in event_type.__mro__ for h in self._handlers.get(base, ()))
            self._resolved[event_type] = found
        return found

    async def publish(self, event: Any) -> int:
        """Deliver ``event`` to its handlers; return how many succeeded."""
        self.stats.published += 1
        succeeded = 0
        for handler in self._handlers_for(type(event)):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one failing handler must not stop the others; logged, counted
                self.stats.failed += 1
                log.error(
                    "event handler failed",
                    event_type=event_type_of(type(event)),
                    handler=getattr(handler, "__qualname__", repr(handler)),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
                continue
            succeeded += 1
        self.stats.delivered += succeeded
        return succeeded
