"""Messaging: one broker API over memory, Redis Streams, RabbitMQ, NATS JetStream and Kafka.

::

    from mainspring.messaging import RetryPolicy, create_broker

    broker = create_broker("amqp://guest:guest@localhost/")

    @broker.subscriber("orders", group="billing", concurrency=4, retry=RetryPolicy(max_attempts=5))
    async def on_order(event: OrderPlaced) -> None: ...

    async with broker:
        await broker.publish("orders", OrderPlaced(order_id=1), key="customer-7")

Delivery is at least once; a message is acked only after its handler succeeds. Failures are
redelivered after a delay (:class:`RetryPolicy`), then go to ``<topic>.dlq`` with the error's details.
See ``docs/messaging.md``.
"""

from mainspring.messaging._codecs import (
    AvroCodec,
    Codec,
    IncompatibleSchemaError,
    InvalidPayloadError,
    JsonCodec,
    MsgpackCodec,
)
from mainspring.messaging._factory import create_broker, create_transport
from mainspring.messaging._retry import RetryPolicy
from mainspring.messaging._transport import Delivery, Record, Subscription, Transport
from mainspring.messaging.base import (
    Broker,
    BrokerStats,
    Inbox,
    SubscriberInfo,
    as_message,
    build_record,
    dead_letter_topic,
)
from mainspring.messaging.message import Message, event_type_of, uuid7

__all__ = [
    "AvroCodec",
    "Broker",
    "BrokerStats",
    "Codec",
    "Delivery",
    "Inbox",
    "IncompatibleSchemaError",
    "InvalidPayloadError",
    "JsonCodec",
    "Message",
    "MsgpackCodec",
    "Record",
    "RetryPolicy",
    "SubscriberInfo",
    "Subscription",
    "Transport",
    "as_message",
    "build_record",
    "create_broker",
    "create_transport",
    "dead_letter_topic",
    "event_type_of",
    "uuid7",
]
