"""The Redis Streams transport: ``redis://``, ``rediss://``, ``redis+sentinel://`` (extra ``redis``).

One stream per topic, one consumer group per broker group (created at id ``0``, so a new group reads
everything the stream still holds). Key layout and scripts: :mod:`mainspring.messaging._redis_streams`.

* publish: ``XADD`` (a batch pipelined, in order, each reply awaited); ``maxlen`` trims topic
  streams approximately (``MAXLEN ~``; off by default; never applied to ``.dlq`` topics). With a
  delay the records wait in the topic's ``:delayed`` sorted set.
* fetch: ``XREADGROUP ... BLOCK`` on the topic stream and the group's retry stream. Before blocking, a
  fetch moves due delayed records (Lua: ``XADD`` + ``ZREM`` atomically; at least every ``block``
  seconds, sooner when it knows the next due time), takes over entries another consumer left idle for
  ``claim_idle`` seconds (``XAUTOCLAIM``, every ``claim_idle / 2``), and after a reconnect re-reads its
  own pending entries (``XREADGROUP`` id ``0``) that it never handed out.
* ack: ``XACK`` (plus ``XDEL`` for retry-stream entries); acks asked for while an ``XACK`` is on its
  way are sent together in the next one. retry: in one ``MULTI``, schedule the record
  with its new headers in the group's retry set and ``XACK`` the original. release: in one ``MULTI``,
  ``XADD`` the record unchanged to the group's retry stream and ``XACK`` the original -- Redis cannot
  hand a pending entry back to "nobody", and leaving it pending would keep it from the other consumers
  for ``claim_idle`` (after a shutdown, forever for this consumer name); the copy is read at once by
  any consumer of the group and does not raise ``ms_attempt``.
* Connection drops: every call is retried with capped, jittered backoff; publish, settle, browse and
  purge give up after ``publish_timeout`` with ``ServiceUnavailableError``; fetch keeps trying (returning
  empty on its timeout). Unacked entries stay pending and come back (re-read or claimed): at least once.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from mainspring._compat import require
from mainspring.cache._redis_client import ClientOptions, Deadlines, RedisTarget, async_client, parse_target
from mainspring.config._safety import mask_url_password
from mainspring.errors import (
    BadRequestError,
    ConfigError,
    ConfigProblem,
    ConflictError,
    MainspringError,
    ServiceUnavailableError,
)
from mainspring.logging import get_logger
from mainspring.messaging._redis_consumer import RedisDelivery, RedisSubscription, backoff, check_topic
from mainspring.messaging._redis_streams import (
    ADD_DELAYED_SCRIPT,
    MOVE_DUE_SCRIPT,
    TopicKeys,
    delayed_member,
    entry_fields,
    entry_record,
    pack_xadd,
)
from mainspring.messaging._transport import DLQ_SUFFIX, Record, Transport

__all__ = ["RedisDelivery", "RedisSubscription", "RedisTransport"]

log = get_logger("mainspring.messaging")

T = TypeVar("T")
_FEATURE = "the Redis message transport"
_MOVE_LIMIT = 100  # delayed records moved per set and script run (bounds the script's run time)
_KEY_CACHE = 1024  # topics whose stream key publish remembers


def _seconds(value: object) -> bool:
    """Return whether ``value`` is a finite number of seconds >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < math.inf


def _positive(name: str, value: object, problems: list[ConfigProblem]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        problems.append(
            ConfigProblem(f"messaging.{name}", "must be a finite number of seconds > 0", repr(value))
        )
        return 1.0
    return float(value)


class RedisTransport(Transport):
    """Records in Redis Streams with consumer groups (see the module docstring for the layout).

    ``url``: ``redis://[user:pass@]host:6379/0`` (``rediss://`` for TLS) or
    ``redis+sentinel://host:26379,host2/mymaster/0``. Options (keyword-only): ``claim_idle`` seconds
    after which another consumer takes over an unacked entry (keep it above your longest handler
    run); ``block`` longest single blocking read in seconds (also how late a delayed record published
    by another process may be seen); ``publish_timeout`` how long publish/ack/retry/browse/purge wait
    through an outage; ``prefix`` of every key; ``maxlen`` approximate cap of each topic stream
    (``None``: no trimming -- trimmed entries are lost even for groups that did not read them yet);
    ``consumer_name`` this process's name in the groups (default ``host-pid-random``; a stable name
    lets a restarted process re-read its own pending entries at once); ``timeout`` per command;
    ``connect_timeout``; ``max_connections`` pool size (each fetch holds one while blocked).
    Unknown options raise ``ConfigError``. Nothing connects before :meth:`start`.
    """

    schemes = ("redis", "rediss", "redis+sentinel")

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        claim_idle: float = 30.0,
        block: float = 1.0,
        publish_timeout: float = 10.0,
        prefix: str = "ms:",
        maxlen: int | None = None,
        consumer_name: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_connections: int = 50,
        **unknown: object,
    ) -> None:
        """Check the URL and options (``ConfigError`` lists every problem); nothing connects yet."""
        problems = [
            ConfigProblem(f"messaging.{name}", "not an option of the Redis transport", repr(value))
            for name, value in unknown.items()
        ]
        self.claim_idle = _positive("claim_idle", claim_idle, problems)
        self.block = _positive("block", block, problems)
        self.publish_timeout = _positive("publish_timeout", publish_timeout, problems)
        self.timeout = _positive("timeout", timeout, problems)
        connect = _positive("connect_timeout", connect_timeout, problems)
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            problems.append(
                ConfigProblem("messaging.prefix", "must be a string without { or }", repr(prefix))
            )
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
            problems.append(
                ConfigProblem("messaging.maxlen", "must be an integer >= 1 or None", repr(maxlen))
            )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 2:
            problems.append(
                ConfigProblem("messaging.max_connections", "must be an integer >= 2", repr(max_connections))
            )
        if consumer_name is not None and (not isinstance(consumer_name, str) or not consumer_name):
            problems.append(
                ConfigProblem("messaging.consumer_name", "must be a non-empty string", repr(consumer_name))
            )
        self.url = mask_url_password(url) if isinstance(url, str) else repr(url)
        target = self._parse(url, problems)
        if problems or target is None:
            raise ConfigError(f"invalid Redis message transport options for {self.url}", problems=problems)
        self.target: RedisTarget = target
        self.prefix = prefix
        self.maxlen = maxlen
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._options = ClientOptions(self.timeout, connect, max_connections, "mainspring-messaging")
        errors = require("redis.exceptions", extra="redis", feature=_FEATURE)
        self.response_error: type[Exception] = errors.ResponseError
        #: Errors that mean "Redis is unreachable or not ready": retried with backoff.
        self.transient: tuple[type[BaseException], ...] = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.ReadOnlyError,  # a replica after a failover; the pool finds the new master
            OSError,
            TimeoutError,
        )
        #: What closing a subscription may meet and only logs.
        self.close_errors: tuple[type[BaseException], ...] = (
            *self.transient,
            self.response_error,
            MainspringError,
        )
        self._client: Any = None
        self._move: Any = None
        self._subscriptions: list[RedisSubscription] = []
        self._names: dict[tuple[str, str], int] = {}
        self._stream_keys: dict[str, str] = {}
        self._deadlines = Deadlines(self.timeout)
        # MAXLEN ~ n, encoded once (None: streams are not trimmed).
        self._trim: bytes | None = None if self.maxlen is None else str(self.maxlen).encode()

    @staticmethod
    def _parse(url: object, problems: list[ConfigProblem]) -> RedisTarget | None:
        if not isinstance(url, str):
            problems.append(ConfigProblem("messaging.url", "must be a string", repr(url)))
            return None
        if url.strip().lower().startswith("redis+cluster"):
            problems.append(
                ConfigProblem("messaging.url", "Redis Cluster is not supported by the transport yet")
            )
            return None
        try:
            target = parse_target(url, dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)))
        except ConfigError as exc:
            # The parser is the cache's: name the messaging URL in its problems.
            problems += [
                ConfigProblem(p.path.replace("cache.", "messaging.", 1), p.reason, p.value)
                for p in exc.problems
            ]
            return None
        if target.kind == "cluster":
            problems.append(
                ConfigProblem("messaging.url", "Redis Cluster is not supported by the transport yet")
            )
            return None
        return target

    def __repr__(self) -> str:
        return f"RedisTransport({self.url!r}, prefix={self.prefix!r})"

    def keys(self, topic: str) -> TopicKeys:
        """Return the Redis keys of ``topic``."""
        return TopicKeys.of(self.prefix, topic)

    def _stream_key(self, topic: str) -> str:
        key = self._stream_keys.get(topic)
        if key is None:
            if len(self._stream_keys) >= _KEY_CACHE:  # many one-off topics: start over, stay bounded
                self._stream_keys.clear()
            key = self._stream_keys[topic] = TopicKeys.of(self.prefix, topic).stream
        return key

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and PING, waiting up to ``publish_timeout`` (then ``ServiceUnavailableError``)."""
        if self._client is not None:
            return
        self._client = async_client(self.target, self._options)
        self._move = self._client.register_script(MOVE_DUE_SCRIPT)
        try:
            await self.call("connect", lambda client: client.ping())
        except MainspringError:
            client, self._client = self._client, None
            await client.aclose()
            raise

    async def stop(self) -> None:
        """Close every subscription, then the connections. Safe to call twice."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- calls --------------------------------------------------------------------------------------

    def client_for(self, what: str) -> Any:
        if self._client is None:
            raise ServiceUnavailableError(
                f"Redis transport at {self.url}: {what} needs a started transport (call start() first)",
                details={"backend": "redis", "operation": what},
            )
        return self._client

    async def call(
        self, what: str, command: Callable[[Any], Awaitable[T]], *, patience: float | None = None
    ) -> T:
        """Run ``command(client)``, retrying through connection errors for ``patience`` seconds.

        ``patience`` defaults to ``publish_timeout``; when it runs out, ``ServiceUnavailableError``.
        A refused command (``ResponseError``) is translated at once.
        """
        patience = self.publish_timeout if patience is None else patience
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            client = self.client_for(what)
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a Redis transport call must run in an asyncio task")
            # One shared timer per slice of time instead of an asyncio.timeout per call (see Deadlines).
            cancelling = task.cancelling()
            slot = self._deadlines.join(task)
            try:
                try:
                    result = await command(client)
                except asyncio.CancelledError:
                    if slot.leave(task, cancelling):
                        raise TimeoutError(f"no reply within {self.timeout:g} s") from None
                    raise
                except BaseException:
                    slot.leave(task, cancelling)
                    raise
                slot.leave(task, cancelling)
            except self.transient as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServiceUnavailableError(
                        f"Redis transport at {self.url}: {what} failed, Redis unreachable "
                        f"({attempt + 1} attempts in {patience:g} s; {type(exc).__name__}: "
                        f"{mask_url_password(str(exc))})",
                        details={"backend": "redis", "operation": what},
                    ) from exc
                if attempt == 0:
                    log.warning(
                        "redis unreachable; retrying", transport=self.url, operation=what, error=repr(exc)
                    )
                await asyncio.sleep(min(left, backoff(attempt)))
                attempt += 1
            except self.response_error as exc:
                raise self.refused(what, exc) from exc
            else:
                if attempt:
                    log.info("redis answers again", transport=self.url, operation=what, attempts=attempt + 1)
                return result

    def refused(self, what: str, exc: Exception) -> MainspringError:
        """Return the error for a command Redis refused."""
        details = {"backend": "redis", "operation": what}
        if str(exc).startswith("WRONGTYPE"):
            return ConflictError(
                f"Redis transport at {self.url}: {what} failed, a key of the topic holds another type "
                f"(choose another prefix): {exc}",
                details=details,
            )
        return ServiceUnavailableError(
            f"Redis transport at {self.url}: {what} refused: {exc}", details=details
        )

    # --- publish / browse / purge -------------------------------------------------------------------

    async def publish(self, records: Sequence[Record], *, delay: float | None = None) -> None:
        """Add ``records`` in order (one pipeline); with ``delay`` seconds, to the topics' delayed sets."""
        if delay is not None and not _seconds(delay):
            raise BadRequestError(f"publish delay must be a finite number of seconds >= 0, got {delay!r}")
        for record in records:
            check_topic(record.topic)
        if not records:
            return
        if delay:
            delay_us = str(math.ceil(delay * 1_000_000))
            # One script run per topic; members of a batch keep its order (see delayed_member).
            members: dict[str, list[bytes]] = {}
            for record in records:
                members.setdefault(self.keys(record.topic).delayed, []).append(
                    delayed_member(entry_fields(record))
                )

            async def add(client: Any) -> Any:
                async with client.pipeline(transaction=False) as pipe:
                    for key, batch in members.items():
                        pipe.eval(ADD_DELAYED_SCRIPT, 1, key, delay_us, *batch)
                    return await pipe.execute()

            await self.call("publish", add)
            return
        # The XADDs are encoded here, in one pass, and written as one packet on one connection
        # (redis-py's pure-Python pack_command was half of the publish CPU); one reply each.
        trim = self._trim
        packet = b"".join(
            pack_xadd(
                self._stream_key(r.topic).encode(),
                entry_fields(r),
                None if r.topic.endswith(DLQ_SUFFIX) else trim,
            )
            for r in records
        )
        count = len(records)

        async def xadd(client: Any) -> None:
            pool = client.connection_pool
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(packet)
                failure: BaseException | None = None
                for _ in range(count):  # every reply is read, so the connection stays in step
                    try:
                        await connection.read_response(disconnect_on_error=True)
                    except self.response_error as exc:
                        failure = failure or exc
                if failure is not None:
                    raise failure
            finally:
                await pool.release(connection)

        # A batch cut by a dropped connection is sent again whole: at least once, never lost.
        await self.call("publish", xadd)

    async def browse(self, topic: str, *, limit: int) -> list[Record]:
        """Return up to ``limit`` records of ``topic``'s stream, oldest first (``XRANGE``), consuming none."""
        check_topic(topic)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequestError(f"browse limit must be an integer >= 1, got {limit!r}")
        key = self.keys(topic).stream
        entries = await self.call("browse", lambda client: client.xrange(key, count=limit))
        return [entry_record(topic, fields) for _, fields in entries if fields]

    async def purge(self, topic: str) -> int:
        """Empty the stream of ``topic`` (``XTRIM MAXLEN 0``, groups kept) and its delayed set; count them.

        Retries already scheduled for a group (its retry stream and set) are not purged.
        """
        check_topic(topic)
        keys = self.keys(topic)

        async def trim(client: Any) -> Any:
            async with client.pipeline(transaction=True) as pipe:
                pipe.xtrim(keys.stream, maxlen=0, approximate=False)
                pipe.zcard(keys.delayed)
                pipe.delete(keys.delayed)
                return await pipe.execute()

        trimmed, delayed, _ = await self.call("purge", trim)
        return int(trimmed) + int(delayed)

    # --- subscribe ----------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> RedisSubscription:
        """Create ``group`` (from id 0) on the topic stream and its retry stream, and join it."""
        check_topic(topic)
        if not isinstance(group, str) or not group:
            raise ConfigError(f"a consumer group must be a non-empty string, got {group!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"prefetch must be an integer >= 1, got {prefetch!r}")
        # A second subscription of one group in this process gets its own consumer name: recovery
        # re-reads a consumer's pending entries, which must not be another subscription's.
        seen = self._names.get((topic, group), 0)
        self._names[(topic, group)] = seen + 1
        consumer = self.consumer_name if not seen else f"{self.consumer_name}-{seen}"
        subscription = RedisSubscription(self, topic, group, consumer, prefetch)
        await self.call("subscribe", subscription.declare)
        self._subscriptions.append(subscription)
        return subscription

    def forget(self, subscription: RedisSubscription) -> None:
        """Drop a closed subscription from those :meth:`stop` closes."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def move_due(self, keys: Sequence[str], client: Any) -> Awaitable[list[int]]:
        """Run the script moving due delayed records of ``keys`` (see ``MOVE_DUE_SCRIPT``)."""
        result: Awaitable[list[int]] = self._move(
            keys=keys, args=[_MOVE_LIMIT, self.maxlen or 0], client=client
        )
        return result
