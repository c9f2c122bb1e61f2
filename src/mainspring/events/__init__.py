"""Events: an in-process event bus, the transactional outbox and the idempotent inbox.

::

    from mainspring.events import Inbox, Outbox, OutboxRelay

    outbox = Outbox(db)
    async with db.transaction():
        await orders.add(order)
        await outbox.add("orders", OrderPlaced(order_id=order.id), key=str(order.customer_id))

    relay = OutboxRelay(db, broker)  # a lifecycle component: start() / stop()

The ``outbox`` and ``inbox`` tables come from the library migrations (``mainspring db upgrade``).
See ``docs/events.md``.
"""

from mainspring.events._bus import EventBus, EventBusStats
from mainspring.events._inbox import Inbox, idempotent
from mainspring.events._models import InboxEntry, OutboxEntry
from mainspring.events._outbox import DEFAULT_CHANNEL, Outbox, OutboxBacklog, OutboxRelay, OutboxRelayStats
from mainspring.events._transactional import TransactionalOutboxEventBus

__all__ = [
    "DEFAULT_CHANNEL",
    "EventBus",
    "EventBusStats",
    "Inbox",
    "InboxEntry",
    "Outbox",
    "OutboxBacklog",
    "OutboxEntry",
    "OutboxRelay",
    "OutboxRelayStats",
    "TransactionalOutboxEventBus",
    "idempotent",
]
