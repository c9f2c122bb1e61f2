"""The Redis cache: ``redis://``, ``rediss://``, ``redis+sentinel://``, ``redis+cluster://`` (extra redis).

:class:`RedisCache` runs on ``redis.asyncio``; :class:`SyncRedisCache` offers the same surface to
synchronous code on redis-py's sync client. Both store the same frames under the same keys, so they
share entries, counters and tag versions. Every call is bounded by ``timeout`` (waiting for a pooled
connection included; the async cache gives up within 1/16 of ``timeout`` past it, see ``Deadlines``)
and goes through a circuit breaker: when Redis is unreachable or slow, reads become misses and
writes no-ops (logged, counted in ``errors``), and nothing is raised to the caller but by
``incr``/``expire``/``ttl``/``clear``, which have no meaningful fallback.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from asyncio import current_task
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from typing_extensions import Unpack

from mainspring.cache._breaker import CircuitBreaker
from mainspring.cache._errors import CacheBackendError
from mainspring.cache._keys import KeySpace
from mainspring.cache._options import CacheOptions
from mainspring.cache._protocols import SyncCache
from mainspring.cache._redis_client import (
    RELEASE_SCRIPT,
    SCAN_COUNT,
    ClientOptions,
    Deadlines,
    Guard,
    RedisTarget,
    async_client,
    check_options,
    conflict,
    glob,
    ms,
    parse_target,
    scan,
    seconds_left,
    settings_options,
    unlink,
)
from mainspring.cache._redis_sync import BlockingRedisStore
from mainspring.cache._stats import CacheHealth, CacheStats
from mainspring.cache._sync import SyncView, run_now
from mainspring.cache.base import BytesCache
from mainspring.config._safety import mask_url_password
from mainspring.config._sections import CacheSettings
from mainspring.logging import get_logger

__all__ = ["RedisCache", "SyncRedisCache"]

log = get_logger("mainspring.cache")

T = TypeVar("T")


class RedisCache(BytesCache):
    """A cache in Redis through ``redis.asyncio``; see the module docstring for timeouts and degradation.

    ``url``: ``redis://[user:pass@]host:6379/0`` (``rediss://`` for TLS, ``?cluster=true`` for a
    Cluster), ``redis+sentinel://host:26379,host2:26379/mymaster/0`` or
    ``redis+cluster://host:7000,host2:7000``. ``timeout`` bounds each call end to end,
    ``connect_timeout`` each new connection; ``max_connections`` sizes the pool (a call waits for a
    free connection within its timeout); ``breaker_failures`` consecutive failures open the circuit
    for ``breaker_cooldown`` seconds. Keys are ``{namespace}:{schema_version}:{key}``. Nothing
    connects before :meth:`start`.
    """

    backend_name: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        timeout: float = 0.25,
        connect_timeout: float = 1.0,
        max_connections: int = 50,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Check the URL and options: ``ConfigError`` names every bad one. Nothing connects yet."""
        super().__init__(**options)
        check_options(timeout, connect_timeout, max_connections, breaker_failures, breaker_cooldown)
        self._target = parse_target(url)
        self._options = ClientOptions(float(timeout), float(connect_timeout), max_connections)
        self._setup(url, CircuitBreaker(breaker_failures, float(breaker_cooldown)))

    def _setup(self, url: str, breaker: CircuitBreaker) -> None:
        self.url = mask_url_password(url)
        self._timeout = self._options.timeout
        self._guard = Guard(f"redis cache at {self.url}", breaker)
        self._client: Any = None
        self._release: Any = None
        self._deadlines = Deadlines(self._timeout)
        #: Single-key GETs in flight: a one-item list holding the future of the readers that joined.
        self._reads: dict[str, list[asyncio.Future[bytes | None] | None]] = {}

    @classmethod
    def from_settings(cls, settings: CacheSettings, extra: Mapping[str, str] | None = None) -> RedisCache:
        """Build a Redis cache from ``settings`` (``redis_*`` fields; ``extra``: the URL's other options)."""
        target, client_options, breaker, options = settings_options(settings, extra)
        cache = cls.__new__(cls)
        BytesCache.__init__(cache, **options)
        cache._target, cache._options = target, client_options
        cache._setup(settings.url, breaker)
        return cache

    @property
    def target(self) -> RedisTarget:
        """Where this cache connects (kind of deployment, nodes, database)."""
        return self._target

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding the calls (``breaker.state``, ``breaker.opened``)."""
        return self._guard.breaker

    def __repr__(self) -> str:
        return f"RedisCache({self.url!r}, namespace={self.keys.namespace!r}, version={self.keys.version!r})"

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the client and try one PING; an unreachable Redis is logged, not raised (it degrades)."""
        await super().start()
        if self._client is None:
            self._client = async_client(self._target, self._options)
            self._release = self._client.register_script(RELEASE_SCRIPT)
        try:
            await self._ping()
        except CacheBackendError as exc:
            log.warning("redis cache unreachable at start; degrading until it answers", error=exc.message)

    async def stop(self) -> None:
        """Wait for background loads (``shutdown_timeout``), then close the pooled connections.

        The client is kept: like every cache, a stopped one still answers (a later call reconnects).
        """
        try:
            await super().stop()
        finally:
            if self._client is not None:
                await self._client.aclose()

    # --- the primitives -----------------------------------------------------------------------------

    async def _call(self, operation: str, command: Callable[[Any], Awaitable[T]]) -> T:
        # The hot path of every hit: no context manager, no extra coroutine, one shared timer.
        client = self._client
        if client is None:
            raise CacheBackendError(
                f"{self._guard.where}: not started; call 'await cache.start()' or use 'async with'"
            )
        guard = self._guard
        if not guard.breaker.quiet:
            guard.check(operation)
        task = current_task()
        if task is None:
            raise RuntimeError("a Redis cache call must run in an asyncio task")
        cancelling = task.cancelling()
        slot = self._deadlines.join(task)
        try:
            result = await command(client)
        except asyncio.CancelledError:
            if slot.leave(task, cancelling):
                guard.failed(operation, TimeoutError(), self._timeout)
            raise
        except guard.failures as exc:
            slot.leave(task, cancelling)
            guard.failed(operation, exc, self._timeout)
        except BaseException:
            slot.leave(task, cancelling)
            raise
        slot.leave(task, cancelling)
        if not guard.breaker.quiet:  # else answered() would change nothing
            guard.answered()
        return result

    async def _pipelined(self, operation: str, fill: Callable[[Any], object]) -> list[Any]:
        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            fill(pipe)
            return list(await pipe.execute())

        return await self._call(operation, run)

    async def _get_raw(self, keys: Sequence[str]) -> list[bytes | None]:
        if len(keys) != 1:
            return await self._pipelined("get_many", lambda p: [p.get(k) for k in keys])
        key = keys[0]
        reads = self._reads
        shared = reads.get(key)
        if shared is not None:
            # Coalesced: a GET of this key is in flight; its answer is as fresh as ours would be.
            future = shared[0]
            if future is None:
                future = shared[0] = asyncio.get_running_loop().create_future()
            try:
                return [await asyncio.shield(future)]
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # we were cancelled, not the leader
            return [await self._call("get", lambda c: c.get(key))]
        # The leader's future is made only when a second reader joins: most reads are alone.
        flight: list[asyncio.Future[bytes | None] | None] = [None]
        reads[key] = flight
        try:
            value = await self._call("get", lambda c: c.get(key))
        except Exception as exc:
            future = flight[0]
            if future is not None:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" noise when its readers left
            raise
        except BaseException:
            future = flight[0]
            if future is not None:
                future.cancel()
            raise
        finally:
            if reads.get(key) is flight:
                del reads[key]
        future = flight[0]
        if future is not None:
            future.set_result(value)
        return [value]

    def _forget(self, keys: Iterable[str]) -> None:
        # A read started before a write must not answer readers that come after it.
        for key in keys:
            self._reads.pop(key, None)

    async def _set_raw(self, items: Sequence[tuple[str, bytes]], ttl: float | None) -> None:
        px = None if ttl is None else ms(ttl)
        self._forget(k for k, _ in items)
        if len(items) == 1:
            await self._call("set", lambda c: c.set(items[0][0], items[0][1], px=px))
        else:
            await self._pipelined("set_many", lambda p: [p.set(k, v, px=px) for k, v in items])

    async def _delete_raw(self, keys: Sequence[str]) -> int:
        self._forget(keys)
        return int(await self._call("delete", lambda c: c.unlink(*keys)))

    async def _incr_raw(self, key: str, by: int) -> int:
        self._forget([key])
        refused = self._guard.response_error

        async def incr(client: Any) -> int | Exception:
            try:
                return int(await client.incrby(key, by))
            except refused as exc:
                return exc

        result = await self._call("incr", incr)
        if isinstance(result, Exception):
            raise conflict(key, self.keys.entry_prefix, by, result)
        return result

    async def _expire_raw(self, key: str, ttl: float) -> bool:
        self._forget([key])
        return bool(await self._call("expire", lambda c: c.pexpire(key, ms(ttl))))

    async def _ttl_raw(self, key: str) -> float | None:
        return seconds_left(int(await self._call("ttl", lambda c: c.pttl(key))))

    async def _scan_delete(self, prefix: str) -> int:
        match, cursor, removed = glob(prefix), 0, 0
        self._reads.clear()
        if self._target.kind == "cluster":  # one SCAN cursor cannot span the nodes of a cluster
            found = await self._call("clear", lambda c: self._cluster_keys(c, match))
            for start in range(0, len(found), SCAN_COUNT):
                batch = found[start : start + SCAN_COUNT]
                removed += int(await self._call("clear", unlink(batch)))
            return removed
        while True:
            cursor, batch = await self._call("clear", scan(cursor, match))
            if batch:
                removed += int(await self._call("clear", unlink(batch)))
            if cursor == 0:
                return removed

    @staticmethod
    async def _cluster_keys(client: Any, match: str) -> list[bytes]:
        return [key async for key in client.scan_iter(match=match, count=SCAN_COUNT)]

    async def _ping(self) -> None:
        await self._call("ping", lambda c: c.ping())

    def _lease(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return self._leased(self.keys.lease(key), ttl, wait)

    @asynccontextmanager
    async def _leased(self, name: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        # SET NX PX with a random token; waiters poll with capped, jittered backoff. A waiter that
        # takes the lease after the holder stored the value finds it on the base's re-read at once.
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        delay, held = 0.005, False
        while True:
            try:
                held = bool(await self._call("lease", lambda c: c.set(name, token, nx=True, px=ms(ttl))))
            except CacheBackendError as exc:
                log.warning(
                    "cache lease unavailable; loading without it", cache=repr(self), error=exc.message
                )
                break
            left = deadline - time.monotonic()
            if held or left <= 0:
                break
            await asyncio.sleep(min(left, delay * (0.5 + self._rng.random())))
            delay = min(delay * 2, 0.05)
        try:
            yield held
        finally:
            if held:
                try:
                    await self._call(
                        "release lease", lambda c: self._release(keys=[name], args=[token], client=c)
                    )
                except CacheBackendError as exc:
                    log.warning(
                        "cache lease not released; it expires by itself", lease=name, error=exc.message
                    )


class SyncRedisCache:
    """The Redis cache for synchronous code (redis-py's sync client); it implements :class:`SyncCache`.

    Same URL, options, keys and frames as :class:`RedisCache` (the two share entries), same
    degradation and circuit breaker. Thread-safe: ``get_or_set`` runs one loader per key across the
    threads of this process. ``start()``/``stop()`` or ``with``; ``.sync`` is the cache itself (for
    ``@cached`` on plain functions).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        timeout: float = 0.25,
        connect_timeout: float = 1.0,
        max_connections: int = 50,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Check the URL and options; ``ConfigError`` names every bad one. Nothing connects yet."""
        check_options(timeout, connect_timeout, max_connections, breaker_failures, breaker_cooldown)
        breaker = CircuitBreaker(breaker_failures, float(breaker_cooldown))
        client_options = ClientOptions(float(timeout), float(connect_timeout), max_connections)
        self._init(url, parse_target(url), client_options, breaker, options)

    def _init(
        self,
        url: str,
        target: RedisTarget,
        client_options: ClientOptions,
        breaker: CircuitBreaker,
        options: Any,
    ) -> None:
        self.url = mask_url_password(url)
        guard = Guard(f"redis cache at {self.url}", breaker)
        self._store = BlockingRedisStore(target, client_options, guard, **options)
        self._view = SyncView(self._store)

    @classmethod
    def from_settings(cls, settings: CacheSettings, extra: Mapping[str, str] | None = None) -> SyncRedisCache:
        """Build a sync Redis cache from ``settings`` (as :meth:`RedisCache.from_settings`)."""
        target, client_options, breaker, options = settings_options(settings, extra)
        cache = cls.__new__(cls)
        cache._init(settings.url, target, client_options, breaker, options)
        return cache

    def __repr__(self) -> str:
        return repr(self._store)

    @property
    def keys(self) -> KeySpace:
        """The key space (namespace, schema version) of this cache."""
        return self._store.keys

    @property
    def target(self) -> RedisTarget:
        """Where this cache connects."""
        return self._store.target

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding the calls."""
        return self._store.guard.breaker

    @property
    def sync(self) -> SyncRedisCache:
        """This cache: it is already synchronous."""
        return self

    def start(self) -> None:
        """Make the client and try one PING; an unreachable Redis is logged, not raised."""
        store = self._store
        store.started = True
        try:
            store.call("ping", lambda c: c.ping())
        except CacheBackendError as exc:
            log.warning("redis cache unreachable at start; degrading until it answers", error=exc.message)

    def stop(self) -> None:
        """Close the connections."""
        self._store.close()

    def __enter__(self) -> Self:
        """Start the cache."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the cache."""
        self.stop()

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        return self._store.stats()

    def health(self) -> CacheHealth:
        """PING Redis and report it with the stats."""
        return run_now(self._store.health())

    def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value of ``key``, or ``default`` on a miss (a cached ``None`` is a hit)."""
        return self._view.get(key, default)

    def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` for ``ttl`` seconds; a backend failure makes it a no-op."""
        self._view.set(key, value, ttl, tags)

    def delete(self, key: str) -> bool:
        """Remove ``key``; say whether it was there."""
        return self._view.delete(key)

    def exists(self, key: str) -> bool:
        """Say whether ``key`` holds a fresh value."""
        return self._view.exists(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys holding a fresh value."""
        return self._view.get_many(keys)

    def set_many(
        self, mapping: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping`` (one pipeline)."""
        self._view.set_many(mapping, ttl, tags)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many were there."""
        return self._view.delete_many(keys)

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the counter ``key`` atomically; ``CacheBackendError`` when Redis fails."""
        return self._view.incr(key, by)

    def expire(self, key: str, ttl: float) -> bool:
        """Make ``key`` fresh for ``ttl`` more seconds; ``False`` if it holds no fresh value."""
        return self._view.expire(key, ttl)

    def ttl(self, key: str) -> float | None:
        """Return the seconds ``key`` stays fresh (``math.inf``: no expiry, ``None``: not cached)."""
        return self._view.ttl(key)

    def clear(self, prefix: str = "") -> int:
        """Remove every entry whose key starts with ``prefix`` (SCAN + UNLINK); return how many."""
        return self._view.clear(prefix)

    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry attached to any of ``tags``."""
        self._view.invalidate_tags(*tags)

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        negative_ttl: float | None = None,
        cache_none: bool = True,
        stale_ttl: float | None = None,
    ) -> T:
        """Return the cached value of ``key``, or call ``loader`` once per key across threads."""
        return self._view.get_or_set(
            key,
            loader,
            ttl=ttl,
            tags=tags,
            negative_ttl=negative_ttl,
            cache_none=cache_none,
            stale_ttl=stale_ttl,
        )


# mypy checks here that SyncRedisCache implements the SyncCache protocol.
_IMPLEMENTS_SYNC_CACHE: Callable[..., SyncCache] = SyncRedisCache
