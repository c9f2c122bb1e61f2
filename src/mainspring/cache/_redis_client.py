"""Redis connection plumbing shared by ``RedisCache`` and ``SyncRedisCache``.

One parser turns a cache URL into a :class:`RedisTarget` (standalone, Sentinel or Cluster); two
factories build the async and the sync client for it with the same pool, timeouts and retry rules;
:class:`Guard` puts the circuit breaker and the error translation around every call, so neither cache
ever lets a driver exception through; :class:`Deadlines` bounds every call of the async cache.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

from mainspring._compat import require
from mainspring.cache._breaker import CircuitBreaker
from mainspring.cache._errors import CacheBackendError, not_a_counter
from mainspring.cache._options import CacheOptions
from mainspring.cache._settings import cache_options
from mainspring.config._safety import mask_url_password
from mainspring.config._sections import CacheSettings
from mainspring.errors import ConfigError, ConfigProblem, ConflictError
from mainspring.logging import get_logger

__all__ = [
    "RELEASE_SCRIPT",
    "SCAN_COUNT",
    "ClientOptions",
    "Deadlines",
    "Guard",
    "RedisTarget",
    "async_client",
    "check_options",
    "conflict",
    "glob",
    "ms",
    "parse_target",
    "scan",
    "seconds_left",
    "settings_options",
    "sync_client",
    "unlink",
]

log = get_logger("mainspring.cache")

Kind = Literal["standalone", "sentinel", "cluster"]
_FEATURE = "the Redis cache"
_DEFAULT_PORTS = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
#: Query keys passed on to redis-py as they are (TLS material); everything else must be ours.
_PASSTHROUGH = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})
_OURS = frozenset({"cluster", "ssl"})
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a Redis cache connects: the kind of deployment, its nodes and the credentials."""

    kind: Kind
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    service: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a Redis cache talks to the server: timeouts (seconds), pool size, client name."""

    timeout: float = 0.25
    connect_timeout: float = 1.0
    max_connections: int = 50
    client_name: str = "mainspring-cache"

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ClientOptions:
        """Return the options held by ``settings``' ``redis_*`` fields."""
        return cls(
            timeout=settings.redis_timeout,
            connect_timeout=settings.redis_connect_timeout,
            max_connections=settings.redis_max_connections,
        )


def _flag(name: str, value: str, problems: list[ConfigProblem]) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() not in _FALSE:
        problems.append(ConfigProblem(f"cache.url?{name}", "use true or false", repr(value)))
    return False


def _nodes(hosts: str, port: int, problems: list[ConfigProblem]) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, number = part.strip(), str(port)
        if host.startswith("["):  # [ipv6]:port
            inner, _, rest = host[1:].partition("]")
            host, number = inner, rest.removeprefix(":") or number
        elif host.count(":") == 1:
            host, number = host.split(":")
        if not host or not number.isdigit() or not 0 < int(number) < 65536:
            problems.append(ConfigProblem("cache.url", "expected host[:port] (comma-separated)", part))
            continue
        nodes.append((host, int(number)))
    return tuple(nodes)


def parse_target(url: str, extra: Mapping[str, str] | None = None) -> RedisTarget:
    """Return where ``url`` points; ``ConfigError`` listing every problem (password masked).

    ``redis://[user:pass@]host[:port][/db]`` (``rediss://`` for TLS; ``?cluster=true`` for a Cluster),
    ``redis+sentinel://[user:pass@]host[:port],host2.../service[/db]`` (the credentials are the
    master's), ``redis+cluster://[user:pass@]host[:port],host2...`` (``?ssl=true`` for TLS).
    ``extra`` holds the query keys that are not cache settings (``create_cache`` splits them off);
    when omitted, the URL's whole query is read and cache settings in it are skipped.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if extra is None:
        fields = set(CacheSettings.model_fields)
        extra = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in fields}
    problems = [
        ConfigProblem(f"cache.url?{name}", "not an option of the Redis cache", repr(value))
        for name, value in extra.items()
        if name not in _PASSTHROUGH | _OURS
    ]
    kind: Kind = {"redis+sentinel": "sentinel", "redis+cluster": "cluster"}.get(scheme, "standalone")  # type: ignore[assignment]
    if scheme not in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        problems.append(ConfigProblem("cache.url", "not a Redis URL", scheme + "://..."))
    if kind == "standalone" and _flag("cluster", extra.get("cluster", ""), problems):
        kind = "cluster"
    elif "cluster" in extra and kind != "standalone":
        problems.append(ConfigProblem("cache.url?cluster", f"not an option of {scheme}://", extra["cluster"]))
    ssl = scheme == "rediss" or _flag("ssl", extra.get("ssl", ""), problems)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = _nodes(hosts or "localhost", _DEFAULT_PORTS[kind], problems)
    if kind == "standalone" and len(nodes) > 1:
        problems.append(ConfigProblem("cache.url", "one host only; use redis+cluster:// for several", hosts))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    service = segments.pop(0) if kind == "sentinel" and segments else None
    if kind == "sentinel" and not service:
        problems.append(ConfigProblem("cache.url", "name the master: redis+sentinel://host:26379/mymaster/0"))
    db = 0
    if segments:
        if len(segments) > 1 or not segments[0].isdigit():
            problems.append(ConfigProblem("cache.url", "the path is the database number", parts.path))
        else:
            db = int(segments[0])
    if kind == "cluster" and db:
        problems.append(ConfigProblem("cache.url", "a Redis Cluster only has database 0", parts.path))
    if problems:
        raise ConfigError(f"invalid Redis cache URL {mask_url_password(url)}", problems=problems)
    return RedisTarget(
        kind=kind,
        nodes=nodes,
        db=db,
        service=service,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=ssl,
        ssl_options={k: v for k, v in extra.items() if k in _PASSTHROUGH},
    )


def _connection_kwargs(
    target: RedisTarget, options: ClientOptions, retry: Any, socket_timeout: float | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        "client_name": options.client_name,
        # No retries: a call that failed degrades at once (bounded latency), and an INCR whose reply
        # was lost must not be sent twice. Dead pooled connections are replaced when taken anyway.
        "retry": retry,
    }
    if target.ssl:
        kwargs.update(target.ssl_options)
    return kwargs


def _client(
    target: RedisTarget, options: ClientOptions, *, package: str, socket_timeout: float | None
) -> Any:
    """Build a client from ``package`` (``redis`` or ``redis.asyncio``): both have the same layout."""

    def module(name: str) -> Any:
        return require(f"{package}.{name}", extra="redis", feature=_FEATURE)

    backoff = require("redis.backoff", extra="redis", feature=_FEATURE)
    retry = module("retry").Retry(backoff.NoBackoff(), 0)
    kwargs = _connection_kwargs(target, options, retry, socket_timeout)
    if target.kind == "cluster":
        cluster = module("cluster")
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(host, port) for host, port in target.nodes],
            max_connections=options.max_connections,
            ssl=target.ssl,
            **kwargs,
        )
    if target.kind == "sentinel":
        manager = module("sentinel").Sentinel(
            list(target.nodes),
            sentinel_kwargs={
                "socket_timeout": options.timeout,
                "socket_connect_timeout": options.connect_timeout,
            },
        )
        return manager.master_for(
            target.service, db=target.db, max_connections=options.max_connections, ssl=target.ssl, **kwargs
        )
    connection = module("connection")
    (host, port), *_ = target.nodes
    pool = connection.BlockingConnectionPool(
        host=host,
        port=port,
        db=target.db,
        max_connections=options.max_connections,
        # Waiting for a free connection is part of the call, so it shares the call's timeout.
        timeout=options.timeout,
        connection_class=connection.SSLConnection if target.ssl else connection.Connection,
        **kwargs,
    )
    return module("client").Redis.from_pool(pool)


def async_client(target: RedisTarget, options: ClientOptions) -> Any:
    """Return a ``redis.asyncio`` client for ``target``; nothing connects before the first command."""
    # No socket timeout on the async client: the cache bounds each call with its Deadlines (a
    # cancelled read drops its connection). redis-py's socket timeout would cost more, not less: an
    # asyncio.wait_for (a new task) around every write and an asyncio.timeout around every read, and
    # that wait_for can swallow a caller's cancellation on Python 3.11.
    return _client(target, options, package="redis.asyncio", socket_timeout=None)


def sync_client(target: RedisTarget, options: ClientOptions) -> Any:
    """Return a redis-py (sync) client for ``target``; a Cluster client reads the topology at once."""
    return _client(target, options, package="redis", socket_timeout=options.timeout)


SCAN_COUNT = 500
# KEYS: lease. ARGV: our token. Deletes the lease only while it is still ours.
RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def ms(seconds: float) -> int:
    """Return ``seconds`` as whole milliseconds (at least 1), as PX and PEXPIRE take them."""
    return max(1, math.ceil(seconds * 1000))


def seconds_left(pttl: int) -> float | None:
    """Return a PTTL reply as seconds: ``None`` for a missing key, ``math.inf`` for no expiry."""
    return None if pttl == -2 else math.inf if pttl == -1 else pttl / 1000


def glob(prefix: str) -> str:
    """Return the SCAN MATCH pattern for keys starting with ``prefix``."""
    # SCAN MATCH is a glob: a key prefix containing * ? [ ] or \ must match only itself.
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"


def conflict(key: str, prefix: str, by: int, exc: Exception) -> ConflictError:
    """Return the error for an INCRBY that Redis refused (not a counter, or an overflow)."""
    if "overflow" in str(exc):
        return ConflictError(
            f"incrementing cache key {key.removeprefix(prefix)!r} by {by} leaves the 64-bit range",
            details={"key": key[:200]},
        )
    return not_a_counter(key.removeprefix(prefix))


def settings_options(
    settings: CacheSettings, extra: Mapping[str, str] | None
) -> tuple[RedisTarget, ClientOptions, CircuitBreaker, CacheOptions]:
    """Return everything a Redis cache is built from, read from ``settings``."""
    return (
        parse_target(settings.url, extra),
        ClientOptions.from_settings(settings),
        CircuitBreaker(settings.redis_breaker_failures, settings.redis_breaker_cooldown),
        cache_options(settings),
    )


def check_options(
    timeout: float, connect_timeout: float, max_connections: int, failures: int, cooldown: float
) -> None:
    """Raise ``ConfigError`` listing every bad connection or breaker option."""
    problems = [
        ConfigProblem(f"cache.redis_{name}", "must be a finite number > 0", repr(value))
        for name, value in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("breaker_cooldown", cooldown),
        )
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf
    ]
    problems += [
        ConfigProblem(f"cache.redis_{name}", "must be an integer >= 1", repr(value))
        for name, value in (("max_connections", max_connections), ("breaker_failures", failures))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1
    ]
    if problems:
        raise ConfigError("invalid Redis cache options", problems=problems)


def unlink(keys: Sequence[Any]) -> Callable[[Any], Any]:
    """Return the command that unlinks ``keys`` (bound now, not when a loop variable moves on)."""
    return lambda client: client.unlink(*keys)


def scan(cursor: int, match: str) -> Callable[[Any], Any]:
    """Return the command for one SCAN step from ``cursor``."""
    return lambda client: client.scan(cursor, match=match, count=SCAN_COUNT)


class Guard:
    """The circuit breaker and error translation around every call of one Redis cache.

    ``check()`` before a call (refuses at once while the circuit is open), then ``answered()`` after
    any reply from the server, or ``failed()`` for a connection error or a timeout: both raise
    :class:`CacheBackendError`, which the cache base degrades to a miss or a no-op.
    """

    def __init__(self, where: str, breaker: CircuitBreaker) -> None:
        """Guard the cache described by ``where`` (password-free) with ``breaker``."""
        self.where = where
        self.breaker = breaker
        errors = require("redis.exceptions", extra="redis", feature=_FEATURE)
        self.response_error: type[Exception] = errors.ResponseError
        #: What a call may raise that means the server is unreachable, failing or too slow.
        self.failures: tuple[type[BaseException], ...] = (
            errors.RedisError,
            errors.RedisClusterException,  # not a RedisError: no reachable node, bad topology
            OSError,
            TimeoutError,
        )

    def check(self, operation: str) -> None:
        """Raise :class:`CacheBackendError` without calling Redis while the circuit is open."""
        if not self.breaker.allow():
            raise CacheBackendError(
                f"{self.where}: {operation} skipped, the circuit is open after repeated failures "
                f"(next probe in {self.breaker.retry_in():.1f} s)",
                details={"backend": "redis", "operation": operation, "circuit": "open"},
            )

    def answered(self) -> None:
        """Record that the server answered (closing the circuit if it was open)."""
        if self.breaker.success():
            log.warning("cache backend answers again; circuit closed", cache=self.where)

    def failed(self, operation: str, exc: BaseException, timeout: float) -> NoReturn:
        """Record a failure and raise it as :class:`CacheBackendError`."""
        if isinstance(exc, self.response_error):
            self.answered()  # the server is there; the command was refused
            detail = f"refused: {exc}"
        else:
            if self.breaker.failure():
                log.error(
                    "cache backend failing; circuit opened",
                    cache=self.where,
                    failures=self.breaker.failures,
                    cooldown=self.breaker.cooldown,
                )
            detail = f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else type(exc).__name__
            detail = f"{detail}: {exc}" if str(exc) and not isinstance(exc, TimeoutError) else detail
        raise CacheBackendError(
            f"{self.where}: {operation} failed ({mask_url_password(detail)})",
            details={"backend": "redis", "operation": operation},
        ) from exc


class _Slot:
    """The calls whose deadlines fall in one slice of time, and whether its timer has fired."""

    __slots__ = ("fired", "tasks")

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.fired = False

    def leave(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Take ``task`` out; return whether this slot timed it out (and nobody else cancelled it).

        ``cancelling`` is ``task.cancelling()`` from before the call: a cancellation requested by
        someone else, before or during the call, is not ours to turn into a timeout.
        """
        self.tasks.discard(task)
        return self.fired and task.uncancel() <= cancelling


class Deadlines:
    """Bounds calls to ``timeout`` seconds with one shared timer per slice of time, not one per call.

    ``asyncio.timeout`` schedules and cancels a timer per call: a Python object pushed on and popped
    from the loop's heap with Python comparisons, as costly as the rest of a cache hit together at 50
    concurrent calls. Here a call joins the slot its deadline falls in (slots are ``timeout / 16``
    wide): a set add and a set discard. One timer per slot cancels the calls still in it when it fires,
    so a call is cancelled after ``timeout`` to ``timeout * 17/16`` seconds, and :meth:`_Slot.leave`
    turns that cancellation into a timeout the way ``asyncio.timeout`` does (``uncancel``).
    """

    SLOTS = 16

    def __init__(self, timeout: float) -> None:
        """Bound calls to ``timeout`` seconds (a little more, see the class docstring)."""
        self.timeout = timeout
        self._width = timeout / self.SLOTS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, _Slot] = {}

    def join(self, task: asyncio.Task[Any]) -> _Slot:
        """Start the deadline of a call by ``task``; the caller must ``leave()`` the slot returned."""
        loop = task.get_loop()
        if loop is not self._loop:  # a cache used from a new event loop: its old timers are moot
            self._loop, self._slots = loop, {}
        number = int((loop.time() + self.timeout) / self._width) + 1
        slot = self._slots.get(number)
        if slot is None:
            slot = self._slots[number] = _Slot()
            loop.call_at(number * self._width, _expire, self._slots, number)
        slot.tasks.add(task)
        return slot


def _expire(slots: dict[int, _Slot], number: int) -> None:
    slot = slots.pop(number)
    slot.fired = True
    for task in slot.tasks:
        task.cancel()
