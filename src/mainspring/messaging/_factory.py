"""``create_broker(url)``: the broker for a URL, its transport chosen by the scheme."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from mainspring.config import MessagingSettings
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
    url: str | MessagingSettings = "memory://",
    *,
    codec: Codec | None = None,
    source: str | None = None,
    inbox: Inbox | None = None,
    fetch_timeout: float | None = None,
    drain_timeout: float | None = None,
    **options: Any,
) -> Broker:
    """Return a :class:`Broker` on the transport for ``url``; other keywords go to the transport.

    ``url`` is a broker URL -- ``memory://`` (in process, the default), ``redis://`` (Redis Streams),
    ``amqp://`` (RabbitMQ), ``nats://`` (NATS JetStream), ``kafka://host:port[,host:port]`` (Kafka) --
    or the :class:`~mainspring.config.MessagingSettings` section, whose values the keywords override.
    """
    if isinstance(url, MessagingSettings):
        settings = url
        url = settings.url
        options = {**settings.options, **options}
        source = source if source is not None else settings.source
        fetch_timeout = fetch_timeout if fetch_timeout is not None else settings.fetch_timeout
        drain_timeout = drain_timeout if drain_timeout is not None else settings.drain_timeout
    return Broker(
        create_transport(url, **options),
        codec=codec,
        source=source or "mainspring",
        inbox=inbox,
        fetch_timeout=1.0 if fetch_timeout is None else fetch_timeout,
        drain_timeout=10.0 if drain_timeout is None else drain_timeout,
    )
