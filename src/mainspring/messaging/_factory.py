"""``create_broker(url)``: the broker for a URL, its transport chosen by the scheme."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from mainspring.errors import ConfigError
from mainspring.messaging._codecs import Codec
from mainspring.messaging._transport import Transport
from mainspring.messaging.base import Broker, Inbox

__all__ = ["create_broker", "create_transport"]

# scheme -> (module, class); imported only when used, so a missing extra fails with its name.
_TRANSPORTS: dict[str, tuple[str, str]] = {
    "memory": ("mainspring.messaging.memory", "MemoryTransport"),
    "redis": ("mainspring.messaging.redis", "RedisTransport"),
    "rediss": ("mainspring.messaging.redis", "RedisTransport"),
    "amqp": ("mainspring.messaging.rabbitmq", "RabbitMQTransport"),
    "amqps": ("mainspring.messaging.rabbitmq", "RabbitMQTransport"),
    "nats": ("mainspring.messaging.nats", "NatsTransport"),
    "tls": ("mainspring.messaging.nats", "NatsTransport"),
    "kafka": ("mainspring.messaging.kafka", "KafkaTransport"),
}


def create_transport(url: str, **options: Any) -> Transport:
    """Return the :class:`Transport` for ``url`` (``memory://``, ``redis://``, ``amqp://``, ``nats://``,
    ``kafka://``), built with the transport's keyword ``options``."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"broker URL must look like scheme://..., got {url!r}")
    scheme = urlsplit(url).scheme.lower()
    target = _TRANSPORTS.get(scheme)
    if target is None:
        raise ConfigError(f"unsupported broker URL scheme {scheme!r}; use one of {sorted(set(_TRANSPORTS))}")
    module = importlib.import_module(target[0])
    cls: Any = getattr(module, target[1])
    try:
        transport: Transport = cls(url, **options)
        return transport
    except TypeError as exc:
        raise ConfigError(f"bad options for {target[1]}: {exc}") from exc


def create_broker(
    url: str = "memory://",
    *,
    codec: Codec | None = None,
    source: str = "mainspring",
    inbox: Inbox | None = None,
    fetch_timeout: float = 1.0,
    drain_timeout: float = 10.0,
    **options: Any,
) -> Broker:
    """Return a :class:`Broker` on the transport for ``url``; other keywords go to the transport.

    ``memory://`` (in process, the default), ``redis://`` (Redis Streams), ``amqp://`` (RabbitMQ),
    ``nats://`` (NATS JetStream), ``kafka://host:port[,host:port]`` (Kafka).
    """
    return Broker(
        create_transport(url, **options),
        codec=codec,
        source=source,
        inbox=inbox,
        fetch_timeout=fetch_timeout,
        drain_timeout=drain_timeout,
    )
