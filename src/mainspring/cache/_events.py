"""Event-driven invalidation: domain events name the cache entries they make stale.

The cache does not know about the event bus or the broker (they are other subsystems); an
:class:`EventInvalidator` holds the rules and hands out handlers to subscribe wherever the events
flow::

    invalidator = EventInvalidator(cache)
    invalidator.on(
        OrderChanged, keys=lambda e: [f"order:{e.order_id}"], tags=lambda e: [f"customer:{e.customer_id}"]
    )

    bus.subscribe(OrderChanged, invalidator.handle)                                   # in process
    broker.add_subscriber("orders", invalidator.handler(OrderChanged), group="cache")  # across services

With a multi-level cache one consumer group is enough: invalidating L2 also tells every instance to
drop its L1 copy (the cache's own invalidation channel).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from mainspring.cache._protocols import Cache
from mainspring.errors import ConfigError

__all__ = ["EventInvalidator"]

E = TypeVar("E")
Names = Callable[[Any], Iterable[str]]


@dataclass(frozen=True, slots=True)
class _Rule:
    event_type: type[Any]
    keys: Names | None
    tags: Names | None
    prefixes: Names | None


class EventInvalidator:
    """Invalidate cache keys, tags and prefixes when events arrive (see the module docstring)."""

    def __init__(self, cache: Cache) -> None:
        """Invalidate entries of ``cache``."""
        self.cache = cache
        self._rules: list[_Rule] = []
        #: Events handled and entries dropped, for tests and metrics.
        self.handled = 0

    def on(
        self,
        event_type: type[E],
        *,
        keys: Callable[[E], Iterable[str]] | None = None,
        tags: Callable[[E], Iterable[str]] | None = None,
        prefixes: Callable[[E], Iterable[str]] | None = None,
    ) -> Self:
        """Add a rule: an ``event_type`` event (or a subclass's) invalidates the names these give."""
        if not isinstance(event_type, type):
            raise ConfigError(f"EventInvalidator.on() needs an event class, got {event_type!r}")
        if keys is None and tags is None and prefixes is None:
            raise ConfigError(
                f"the rule for {event_type.__name__} invalidates nothing: give keys, tags or prefixes"
            )
        self._rules.append(_Rule(event_type, keys, tags, prefixes))
        return self

    async def handle(self, event: Any) -> None:
        """Apply every rule matching ``event``'s type; an event no rule matches is ignored."""
        for rule in self._rules:
            if not isinstance(event, rule.event_type):
                continue
            if rule.keys is not None:
                names = _names(rule.keys(event), "keys")
                if names:
                    await self.cache.delete_many(names)
            if rule.tags is not None:
                names = _names(rule.tags(event), "tags")
                if names:
                    await self.cache.invalidate_tags(*names)
            if rule.prefixes is not None:
                for prefix in _names(rule.prefixes(event), "prefixes"):
                    if not prefix:
                        raise ConfigError(
                            "an invalidation prefix must not be empty (it would clear the cache)"
                        )
                    await self.cache.clear(prefix)
        self.handled += 1

    def handler(self, event_type: type[E]) -> Callable[[E], Awaitable[None]]:
        """Return an async handler typed for ``event_type``, for a broker subscriber."""

        async def invalidate(event: Any) -> None:
            await self.handle(event)

        invalidate.__annotations__ = {"event": event_type, "return": None}
        invalidate.__qualname__ = f"invalidate_{event_type.__name__}"
        return invalidate


def _names(values: Iterable[str], what: str) -> list[str]:
    names = list(values)
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"invalidation {what} must be strings, got {name!r}")
    return names
