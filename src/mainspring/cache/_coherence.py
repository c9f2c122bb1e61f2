"""Cross-instance invalidation of multi-level caches: a Redis pub/sub channel per namespace.

Each :class:`~mainspring.cache.MultiLevelCache` instance publishes what it changed (keys, tags, a
prefix) with its instance id, and a subscriber task drops the same from its own L1 when another
instance's message arrives. Pub/sub is at-most-once: a message sent while a subscriber is
disconnected is lost. So the subscriber tells its listener to flush L1 whenever it loses the
connection and again once it is subscribed anew, and the L1 ttl bound covers a loss nobody noticed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.logging import get_logger

__all__ = ["CoherenceStats", "InvalidationKind", "PromotionGuard", "RedisInvalidation", "channel_name"]

log = get_logger("mainspring.cache")

#: What a message invalidates: ``keys`` and ``tags`` (lists), a key ``prefix``, or ``flush`` (all of L1).
InvalidationKind = Literal["keys", "tags", "prefix", "flush"]
Handler = Callable[[InvalidationKind, Sequence[str]], Awaitable[None]]
_KINDS = frozenset({"keys", "tags", "prefix", "flush"})
#: Seconds publishing is skipped (and counted as failed) after a failed publish.
_PUBLISH_PAUSE = 1.0


def channel_name(url: str, namespace: str) -> str:
    """Return the channel of ``namespace`` on the database ``url`` names (pub/sub ignores db numbers)."""
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
    return f"mainspring.cache:{namespace}:invalidate:{db}"


class PromotionGuard:
    """Tells whether a value read from L2 may be promoted into L1 or raced with an invalidation.

    A read of L2 that overlaps an invalidation of its key (or of tags, a prefix, everything) may have
    fetched the old value: promoting it would keep it in L1 after the invalidation went by. Only the
    keys being read are tracked, so memory stays bounded by the reads in flight.
    """

    __slots__ = ("_broad", "_epoch", "_reading", "_touched")

    def __init__(self) -> None:
        """Start with no read in flight."""
        self._epoch = self._broad = 0
        self._reading: dict[str, int] = {}
        self._touched: dict[str, int] = {}

    def note(self, kind: InvalidationKind, items: Sequence[str]) -> None:
        """Record an invalidation (this instance's or another's)."""
        self._epoch += 1
        if kind != "keys":
            self._broad = self._epoch
            return
        for key in items:
            if key in self._reading:
                self._touched[key] = self._epoch

    def begin(self, keys: Sequence[str]) -> int:
        """Mark ``keys`` as being read; return the token to give :meth:`end`."""
        for key in keys:
            self._reading[key] = self._reading.get(key, 0) + 1
        return self._epoch

    def end(self, keys: Sequence[str], start: int) -> list[bool]:
        """Finish the read begun at ``start``; say for each key whether no invalidation overlapped it."""
        promotable = [self._broad <= start and self._touched.get(key, 0) <= start for key in keys]
        for key in keys:
            left = self._reading[key] - 1
            if left:
                self._reading[key] = left
            else:
                del self._reading[key]
                self._touched.pop(key, None)
        return promotable

    def __len__(self) -> int:
        """Return how many keys are being read."""
        return len(self._reading)


@dataclass(frozen=True, slots=True)
class CoherenceStats:
    """A snapshot of the invalidation channel of one instance.

    ``published``/``publish_errors`` count outgoing messages (for a second after a failure, publishing
    is skipped and counted as failed); ``received`` messages from other
    instances (``ignored`` own echoes and unreadable ones); ``reconnects`` re-subscriptions after a
    lost connection; ``subscriber_errors`` failures of the subscriber; ``connected`` whether it is
    subscribed now; ``last_error`` the latest failure, if any.
    """

    channel: str
    instance_id: str
    connected: bool
    published: int
    publish_errors: int
    received: int
    ignored: int
    reconnects: int
    subscriber_errors: int
    last_error: str | None


class RedisInvalidation:
    """The pub/sub invalidation channel of one :class:`~mainspring.cache.MultiLevelCache` instance.

    ``url`` is a ``redis://`` (or ``rediss://``) URL; ``namespace`` picks the channel (see
    :func:`channel_name`). Nothing connects before :meth:`start`. ``publish`` never raises: a failure
    is logged and counted (other instances then rely on the L1 ttl bound).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        channel: str | None = None,
        timeout: float = 1.0,
        connect_timeout: float = 2.0,
        reconnect_delay: float = 0.05,
        max_reconnect_delay: float = 2.0,
        health_check_interval: float = 5.0,
    ) -> None:
        """Keep the settings; the client, the connection and the subscriber task come in :meth:`start`."""
        self._url = url
        self.channel = channel or channel_name(url, namespace)
        self.instance_id = secrets.token_hex(8)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._health_check_interval = health_check_interval
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        self._subscribed = asyncio.Event()
        self._ever_subscribed = False
        self._published = self._publish_errors = self._received = self._ignored = 0
        self._reconnects = self._subscriber_errors = 0
        self._last_error: str | None = None
        self._publish_paused_until = 0.0

    def __repr__(self) -> str:
        return f"RedisInvalidation({mask_url_password(self._url)!r}, channel={self.channel!r})"

    @property
    def connected(self) -> bool:
        """Whether the subscriber is subscribed now (messages from others reach this instance)."""
        return self._subscribed.is_set()

    def stats(self) -> CoherenceStats:
        """Return a snapshot of the channel's counters."""
        return CoherenceStats(
            channel=self.channel,
            instance_id=self.instance_id,
            connected=self.connected,
            published=self._published,
            publish_errors=self._publish_errors,
            received=self._received,
            ignored=self._ignored,
            reconnects=self._reconnects,
            subscriber_errors=self._subscriber_errors,
            last_error=self._last_error,
        )

    async def start(self, handler: Handler) -> None:
        """Connect, subscribe, and wait up to ``connect_timeout`` for the subscription.

        If Redis does not answer in time the subscriber keeps retrying in the background (logged); the
        cache meanwhile keeps nothing in L1, so it cannot serve what it did not hear about.
        """
        redis = require("redis.asyncio", extra="redis", feature="multi-level cache invalidation")
        retry = require("redis.asyncio.retry", extra="redis", feature="multi-level cache invalidation")
        backoff = require("redis.backoff", extra="redis", feature="multi-level cache invalidation")
        self._handler = handler
        self._client = redis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._connect_timeout,
            health_check_interval=self._health_check_interval,
            # No silent retries: the subscriber must see every lost connection, to flush L1.
            retry=retry.Retry(backoff.NoBackoff(), 0),
        )
        self._task = asyncio.create_task(self._run(), name=f"mainspring.cache:invalidation:{self.channel}")
        try:
            await asyncio.wait_for(self._subscribed.wait(), self._connect_timeout)
        except TimeoutError:
            log.warning(
                "cache invalidation channel not subscribed yet; L1 stays unused until it is",
                channel=self.channel,
                error=self._last_error,
            )

    async def stop(self) -> None:
        """Cancel and await the subscriber, then close the client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._subscribed.clear()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def publish(self, kind: InvalidationKind, items: Sequence[str]) -> None:
        """Tell the other instances to drop ``items`` (keys, tags or a prefix) from their L1."""
        if self._client is None:
            return
        if time.monotonic() < self._publish_paused_until:
            # Redis just failed a publish: do not make every write wait for the timeout meanwhile.
            self._publish_errors += 1
            return
        payload = orjson.dumps([self.instance_id, kind, list(items)])
        redis = require("redis", extra="redis", feature="multi-level cache invalidation")
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(self.channel, payload)
        except (TimeoutError, OSError, redis.RedisError) as exc:
            self._publish_errors += 1
            self._publish_paused_until = time.monotonic() + _PUBLISH_PAUSE
            log.warning(
                "cache invalidation not published; other instances may serve the old value until their "
                "L1 ttl runs out",
                channel=self.channel,
                kind=kind,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            self._published += 1

    # --- the subscriber -----------------------------------------------------------------------------

    async def _run(self) -> None:
        redis = require("redis", extra="redis", feature="multi-level cache invalidation")
        delay = self._reconnect_delay
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    # A bounded wait, so that redis-py's health check (PING) runs on a quiet channel.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        await self._on_subscribed()
                        delay = self._reconnect_delay
                    elif message["type"] == "message":
                        await self._dispatch(message["data"])
            except (OSError, redis.RedisError) as exc:
                await self._on_lost(exc)
            finally:
                await self._close(pubsub)
            # Jittered exponential backoff: a Redis restart must not see every instance at once.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _close(self, pubsub: Any) -> None:
        redis = require("redis", extra="redis", feature="multi-level cache invalidation")
        try:
            await pubsub.aclose()
        except (OSError, redis.RedisError) as exc:
            log.debug("cache invalidation channel closed uncleanly", channel=self.channel, error=str(exc))

    async def _on_subscribed(self) -> None:
        # redis-py may reconnect and re-subscribe by itself: every confirmation after the first means
        # messages may have been missed meanwhile, so L1 is flushed now that none can be missed.
        if self._ever_subscribed:
            self._reconnects += 1
            log.info("cache invalidation channel re-subscribed; L1 flushed", channel=self.channel)
            await self._notify("flush", ())
        self._ever_subscribed = True
        self._subscribed.set()

    async def _on_lost(self, exc: BaseException) -> None:
        self._subscribed.clear()
        self._subscriber_errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "cache invalidation channel lost; L1 flushed and unused until re-subscribed",
            channel=self.channel,
            error=self._last_error,
        )
        await self._notify("flush", ())

    async def _dispatch(self, data: bytes) -> None:
        try:
            sender, kind, items = orjson.loads(data)
            ok = isinstance(sender, str) and kind in _KINDS and isinstance(items, list)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            ok = False
        if not ok:
            self._ignored += 1
            log.warning("unreadable cache invalidation message ignored", channel=self.channel)
            return
        if sender == self.instance_id:
            self._ignored += 1
            return
        self._received += 1
        await self._notify(kind, [str(item) for item in items])

    async def _notify(self, kind: InvalidationKind, items: Sequence[str]) -> None:
        if self._handler is None:
            return
        started = time.perf_counter()
        try:
            await self._handler(kind, items)
        except Exception as exc:  # noqa: BLE001 - a listener bug must not kill the subscriber
            self._subscriber_errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "cache invalidation handler failed",
                channel=self.channel,
                kind=kind,
                error=self._last_error,
                seconds=round(time.perf_counter() - started, 6),
            )
