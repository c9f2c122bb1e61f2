"""The engine of ``SyncRedisCache``: the cache base's logic over Redis primitives that block.

Kept apart from ``redis.py`` so that module stays readable; only ``SyncRedisCache`` uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from mainspring.cache._errors import CacheBackendError
from mainspring.cache._redis_client import (
    SCAN_COUNT,
    ClientOptions,
    Guard,
    RedisTarget,
    conflict,
    glob,
    ms,
    seconds_left,
    sync_client,
    unlink,
)
from mainspring.cache.base import BytesCache

__all__ = ["BlockingRedisStore"]

T = TypeVar("T")


class BlockingRedisStore(BytesCache):
    """The engine of :class:`SyncRedisCache`: the base's logic over primitives that block, never suspend.

    Its coroutines complete without yielding (every primitive calls the sync client directly), so
    :class:`~mainspring.cache._sync.SyncView` runs them to the end in the calling thread, no loop.
    """

    backend_name: ClassVar[str] = "redis-sync"

    def __init__(
        self, target: RedisTarget, client_options: ClientOptions, guard: Guard, **options: Any
    ) -> None:
        """Keep where and how to connect; ``SyncRedisCache.start()`` sets :attr:`client`."""
        super().__init__(**options)
        self.target, self.client_options, self.guard = target, client_options, guard
        self.client: Any = None
        self.started = False
        self._connecting = threading.Lock()

    def _connect(self) -> Any:
        # Made on first use, not in start(): a Cluster client reads the topology when it is made,
        # which fails while the cluster is down; the next call tries again.
        with self._connecting:
            if self.client is None:
                self.client = sync_client(self.target, self.client_options)
            return self.client

    def close(self) -> None:
        """Close the client's connections; like the async cache, a later call reconnects."""
        with self._connecting:
            client, self.client = self.client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"SyncRedisCache({self.guard.where!r}, namespace={self.keys.namespace!r})"

    def call(self, operation: str, command: Callable[[Any], T]) -> T:
        """Run ``command(client)`` behind the breaker; any driver failure leaves as CacheBackendError."""
        if not self.started:
            raise CacheBackendError(f"{self.guard.where}: not started; call 'cache.start()' or use 'with'")
        self.guard.check(operation)
        try:
            client = self.client or self._connect()
            result = command(client)  # bounded by the socket and pool timeouts
        except self.guard.failures as exc:
            self.guard.failed(operation, exc, self.client_options.timeout)
        self.guard.answered()
        return result

    def _pipelined(self, operation: str, fill: Callable[[Any], object]) -> list[Any]:
        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            fill(pipe)
            return list(pipe.execute())

        return self.call(operation, run)

    async def _get_raw(self, keys: Sequence[str]) -> list[bytes | None]:
        if len(keys) == 1:
            return [self.call("get", lambda c: c.get(keys[0]))]
        return self._pipelined("get_many", lambda p: [p.get(k) for k in keys])

    async def _set_raw(self, items: Sequence[tuple[str, bytes]], ttl: float | None) -> None:
        px = None if ttl is None else ms(ttl)
        self._pipelined("set", lambda p: [p.set(k, v, px=px) for k, v in items])

    async def _delete_raw(self, keys: Sequence[str]) -> int:
        return int(self.call("delete", lambda c: c.unlink(*keys)))

    async def _incr_raw(self, key: str, by: int) -> int:
        refused = self.guard.response_error

        def incr(client: Any) -> int | Exception:
            try:
                return int(client.incrby(key, by))
            except refused as exc:
                return exc

        result = self.call("incr", incr)
        if isinstance(result, Exception):
            raise conflict(key, self.keys.entry_prefix, by, result)
        return result

    async def _expire_raw(self, key: str, ttl: float) -> bool:
        return bool(self.call("expire", lambda c: c.pexpire(key, ms(ttl))))

    async def _ttl_raw(self, key: str) -> float | None:
        return seconds_left(int(self.call("ttl", lambda c: c.pttl(key))))

    async def _scan_delete(self, prefix: str) -> int:
        match, removed = glob(prefix), 0
        # scan_iter: one cursor on a single server, one per primary on a cluster.
        found: list[bytes] = self.call("clear", lambda c: list(c.scan_iter(match=match, count=SCAN_COUNT)))
        for start in range(0, len(found), SCAN_COUNT):
            batch = found[start : start + SCAN_COUNT]
            removed += int(self.call("clear", unlink(batch)))
        return removed

    async def _ping(self) -> None:
        self.call("ping", lambda c: c.ping())
