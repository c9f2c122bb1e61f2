"""``MemoryTransport``: an in-process message system, the embedded default (``memory://``).

It keeps the semantics of the real brokers so code and tests behave the same: consumer groups that
share work, a new group reading the topic from its oldest retained record, at-least-once delivery
(a closed subscription gives its unsettled records back), delayed publish and delayed retries on the
event loop's timers (no polling), and dead-letter topics kept without any subscriber.

Brokers made from the same URL in one process share one hub: ``memory://`` is the default hub,
``memory://name`` a named one (tests use a unique name each). Records live in process memory: they
are lost when the process exits, and delayed records are lost when their event loop closes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

from mainspring.errors import ConfigError, ServiceUnavailableError
from mainspring.messaging._transport import Delivery, Record, Subscription, Transport

__all__ = ["MemoryTransport"]

_DEFAULT_RETENTION = 100_000


class _Group:
    """One consumer group's queue: ready records, and waiters for the next one."""

    def __init__(self) -> None:
        self.ready: deque[Record] = deque()
        self.waiters: list[asyncio.Future[None]] = []

    def push(self, record: Record, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(record)
        else:
            self.ready.append(record)
        self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Topic:
    def __init__(self, retention: int) -> None:
        self.log: deque[Record] = deque(maxlen=retention)
        self.groups: dict[str, _Group] = {}


class _Hub:
    """The shared state of one ``memory://`` URL."""

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.topics: dict[str, _Topic] = {}

    def topic(self, name: str) -> _Topic:
        found = self.topics.get(name)
        if found is None:
            found = self.topics[name] = _Topic(self.retention)
        return found

    def append(self, record: Record) -> None:
        topic = self.topic(record.topic)
        topic.log.append(record)
        for group in topic.groups.values():
            group.push(record)

    def group(self, topic_name: str, group_name: str) -> _Group:
        topic = self.topic(topic_name)
        group = topic.groups.get(group_name)
        if group is None:
            group = topic.groups[group_name] = _Group()
            group.ready.extend(topic.log)
        return group


_hubs: dict[str, _Hub] = {}
_delivery_order = itertools.count()


class _MemoryDelivery(Delivery):
    __slots__ = ("_settled", "_subscription", "order")

    def __init__(self, record: Record, subscription: _MemorySubscription) -> None:
        super().__init__(record)
        self._subscription = subscription
        self._settled = False
        self.order = next(_delivery_order)

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._subscription.in_flight.discard(self)
        return True

    async def ack(self) -> None:
        self._settle()

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        if not self._settle():
            return
        group = self._subscription.group
        record = replace(self.record, headers=dict(headers))
        asyncio.get_running_loop().call_later(max(0.0, delay), group.push, record)

    async def release(self) -> None:
        if self._settle():
            self._subscription.group.push(self.record, front=True)


class _MemorySubscription(Subscription):
    def __init__(self, transport: MemoryTransport, group: _Group) -> None:
        self.transport = transport
        self.group = group
        self.in_flight: set[_MemoryDelivery] = set()
        self.closed = False

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        if self.closed:
            return []
        group = self.group
        if not group.ready:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            group.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return []
            finally:
                if waiter in group.waiters:
                    group.waiters.remove(waiter)
        out: list[Delivery] = []
        while group.ready and len(out) < max_messages:
            delivery = _MemoryDelivery(group.ready.popleft(), self)
            self.in_flight.add(delivery)
            out.append(delivery)
        if group.ready:
            group.wake()  # another consumer of the group may take the rest
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # At least once: whatever this consumer holds goes back to its group, oldest first.
        for delivery in sorted(self.in_flight, key=lambda d: d.order, reverse=True):
            await delivery.release()


class MemoryTransport(Transport):
    """In-process topics and consumer groups with real-broker semantics (see the module docstring).

    Options: ``retention`` (records kept per topic for new groups and for :meth:`browse`, default
    100,000; ``memory://?retention=1000`` works too).
    """

    schemes = ("memory",)

    def __init__(self, url: str = "memory://", *, retention: int | None = None) -> None:
        """Remember the hub name and options; nothing is shared until :meth:`start`."""
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigError(f"MemoryTransport needs a memory:// URL, got {url!r}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"retention"}
        if unknown:
            raise ConfigError(f"unknown memory:// URL option(s): {sorted(unknown)}")
        if retention is None and "retention" in query:
            try:
                retention = int(query["retention"][-1])
            except ValueError as exc:
                raise ConfigError(f"retention must be an integer, got {query['retention'][-1]!r}") from exc
        if retention is None:
            retention = _DEFAULT_RETENTION
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ConfigError(f"retention must be an int >= 1, got {retention!r}")
        self.name = (parts.netloc + parts.path).strip("/")
        self.retention = retention
        self._hub: _Hub | None = None
        self._subscriptions: list[_MemorySubscription] = []

    def _require_hub(self) -> _Hub:
        if self._hub is None:
            raise ServiceUnavailableError("the memory transport is not started; call await broker.start()")
        return self._hub

    async def start(self) -> None:
        """Join the process-wide hub named by the URL."""
        if self._hub is None:
            hub = _hubs.get(self.name)
            if hub is None:
                hub = _hubs[self.name] = _Hub(self.retention)
            self._hub = hub

    async def stop(self) -> None:
        """Close this transport's subscriptions (their unsettled records go back)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
        self._hub = None

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Append ``records`` to their topics now, or after ``delay`` seconds."""
        hub = self._require_hub()
        if delay:
            loop = asyncio.get_running_loop()
            for record in records:
                loop.call_later(delay, hub.append, record)
            return
        for record in records:
            hub.append(record)

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> Subscription:
        """Join ``group`` on ``topic``; a new group starts from the oldest retained record."""
        hub = self._require_hub()
        subscription = _MemorySubscription(self, hub.group(topic, group))
        self._subscriptions.append(subscription)
        return subscription

    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Return up to ``limit`` retained records of ``topic``, oldest first."""
        hub = self._require_hub()
        found = hub.topics.get(topic)
        if found is None:
            return []
        return list(itertools.islice(found.log, limit))

    async def purge(self, topic: str) -> int:
        """Forget every record of ``topic``, retained or waiting in a group; return how many were retained."""
        hub = self._require_hub()
        found = hub.topics.get(topic)
        if found is None:
            return 0
        count = len(found.log)
        found.log.clear()
        for group in found.groups.values():
            group.ready.clear()
        return count
