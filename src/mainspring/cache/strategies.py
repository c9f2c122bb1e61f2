"""Caching strategies over any cache: read-through, write-through, write-around and write-behind.

::

    strategies = CacheStrategies(cache, queue=RedisWriteQueue(redis_url, name="orders"))
    strategies.register_writer("orders", store_orders)  # async def store_orders(batch: dict[str, Any])
    async with strategies:
        user = await strategies.read_through("user:1", lambda: load_user(1))
        await strategies.write_through("user:1", user, save_user)  # async def save_user(key, value)
        await strategies.write_behind("order:7", order, "orders", delay=2.0)

Write-behind caches the value at once and stores it later, in batches, through a registered *batch
writer* (``{key: value}``, last write of a key wins), retried with exponential backoff and jitter until
it succeeds, and flushed on :meth:`CacheStrategies.stop`. With a :class:`RedisWriteQueue` the pending
writes live in Redis, so a crash loses none: the next process that starts with the same queue name and
writer names stores them.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from mainspring._lifecycle import AsyncLifecycle
from mainspring.cache._errors import CacheBackendError
from mainspring.cache._protocols import Cache
from mainspring.cache._writebehind import MemoryWriteQueue, PendingWrite, RedisWriteQueue, WriteQueue
from mainspring.errors import InternalError, ValidationError
from mainspring.logging import get_logger

__all__ = [
    "BatchWriter",
    "CacheStrategies",
    "MemoryWriteQueue",
    "RedisWriteQueue",
    "WriteBehindStats",
    "WriteQueue",
    "Writer",
]

log = get_logger("mainspring.cache")

T = TypeVar("T")

#: Stores one value: ``await writer(key, value)`` (write-through, write-around).
Writer = Callable[[str, Any], Awaitable[object]]
#: Stores a batch: ``await writer({key: value, ...})`` (write-behind).
BatchWriter = Callable[[dict[str, Any]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class WriteBehindStats:
    """Counters of the write-behind flusher since start."""

    queued: int
    stored: int
    batches: int
    failures: int
    pending_local: int


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValidationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class CacheStrategies(AsyncLifecycle):
    """Read-through, write-through, write-around and write-behind over ``cache``.

    Write-behind needs :meth:`start` (it runs one owned background task,
    ``mainspring.cache:write-behind``) and :meth:`stop` (which flushes what is pending). ``queue`` holds
    the pending writes: :class:`MemoryWriteQueue` (default, lost if the process dies) or
    :class:`RedisWriteQueue` (durable). A failed batch is retried after ``backoff`` seconds, doubling up
    to ``max_backoff``, with jitter; ``lease`` is how long a claimed batch stays hidden from other
    processes before it is considered abandoned.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        queue: WriteQueue | None = None,
        delay: float = 1.0,
        batch_size: int = 100,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the strategies; nothing starts before :meth:`start`."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self._cache = cache
        self._queue: WriteQueue = queue if queue is not None else MemoryWriteQueue()
        self._delay = _check_positive("delay", delay) if delay else 0.0
        self._batch_size = batch_size
        self._backoff = _check_positive("backoff", backoff)
        self._max_backoff = _check_positive("max_backoff", max_backoff)
        self._lease = _check_positive("lease", lease)
        self._poll = _check_positive("poll_interval", poll_interval)
        self._shutdown_timeout = _check_positive("shutdown_timeout", shutdown_timeout)
        self._clock = clock
        self._writers: dict[str, BatchWriter] = {}
        self._attempts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._queued = self._stored = self._batches = self._failures = 0

    @property
    def cache(self) -> Cache:
        """The cache the strategies work on."""
        return self._cache

    # --- read / write strategies --------------------------------------------------------------------

    async def read_through(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> T:
        """Return the cached ``key``; on a miss load it (one loader per key at a time) and cache it."""
        return await self._cache.get_or_set(key, loader, ttl=ttl, tags=tags)

    async def write_through(
        self, key: str, value: T, writer: Writer, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> T:
        """Store ``value`` with ``writer(key, value)``, then cache it; a failed store leaves the cache."""
        await writer(key, value)
        await self._cache.set(key, value, ttl=ttl, tags=tags)
        return value

    async def write_around(self, key: str, value: T, writer: Writer) -> T:
        """Store ``value`` with ``writer(key, value)``, then drop the cached ``key`` (reads reload it)."""
        await writer(key, value)
        await self._cache.delete(key)
        return value

    # --- write-behind -------------------------------------------------------------------------------

    def register_writer(self, name: str, writer: BatchWriter) -> None:
        """Register the batch writer ``name`` (register every name before :meth:`start` to replay them)."""
        if not name or "\x00" in name:
            raise ValidationError(f"writer name {name!r} must be non-empty and contain no NUL")
        if name in self._writers and self._writers[name] is not writer:
            raise ValidationError(f"a different writer is already registered as {name!r}; pick another name")
        self._writers[name] = writer

    def _writer_name(self, writer: str | BatchWriter) -> str:
        if isinstance(writer, str):
            if writer not in self._writers:
                raise ValidationError(
                    f"no write-behind writer registered as {writer!r}; call register_writer() first"
                )
            return writer
        name = f"{getattr(writer, '__module__', '?')}:{getattr(writer, '__qualname__', '?')}"
        if "<" in name:
            # A lambda or a local function has no name a restarted process could find it by.
            raise ValidationError(
                f"write-behind writer {name!r} has no stable name; register it with "
                "register_writer(name, fn) and pass the name"
            )
        self.register_writer(name, writer)
        return name

    async def write_behind(
        self,
        key: str,
        value: Any,
        writer: str | BatchWriter,
        *,
        delay: float | None = None,
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Queue ``value`` for the store (due in ``delay`` seconds), then cache it at once.

        ``writer`` is a registered name or a module-level batch writer (registered under
        ``module:qualname``). The queue is written first: if it fails the caller gets the
        :class:`CacheBackendError` and the cache is untouched.
        """
        if self._task is None or self._stopping:
            raise InternalError(
                "write_behind() needs a started CacheStrategies; use 'async with strategies:'"
            )
        name = self._writer_name(writer)
        wait = self._delay if delay is None else (_check_positive("delay", delay) if delay else 0.0)
        await self._queue.put(name, key, value, self._clock() + wait)
        self._queued += 1
        await self._cache.set(key, value, ttl=ttl, tags=tags)
        if wait == 0 and self._wake is not None:
            self._wake.set()

    def write_behind_stats(self) -> WriteBehindStats:
        """Return the flusher's counters."""
        return WriteBehindStats(
            queued=self._queued,
            stored=self._stored,
            batches=self._batches,
            failures=self._failures,
            pending_local=len(self._attempts),
        )

    async def pending(self) -> int:
        """Return how many writes wait for their store (in the queue, claimed ones included)."""
        return await self._queue.pending()

    async def flush(self) -> int:
        """Store every pending write now, due or not (one attempt each); return how many were stored."""
        stored = 0
        while True:
            now = self._clock()
            batch = await self._queue.claim(math.inf, self._batch_size, now + self._lease)
            if not batch:
                return stored
            # A write that fails here is due again at once: the next start (or process) retries it.
            done = await self._store(batch, retry_at=now)
            stored += done
            if done < len(batch):
                return stored

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the queue and start the flusher, which also replays writes left by a crashed process."""
        if self._task is not None:
            return
        await self._queue.open()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mainspring.cache:write-behind")
        self._task.add_done_callback(self._flusher_ended)

    def _flusher_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The loop handles writer and queue failures itself; reaching here is a bug: say it loudly.
            self._failures += 1
            log.error("write-behind flusher died; stop() will still flush", error=repr(task.exception()))

    async def stop(self) -> None:
        """Stop the flusher, store what is pending (up to ``shutdown_timeout``), close the queue."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        await asyncio.wait({task}, timeout=self._shutdown_timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        try:
            async with asyncio.timeout(self._shutdown_timeout):
                await self.flush()
        except (TimeoutError, CacheBackendError) as exc:
            log.error("write-behind flush on stop failed", error=str(exc) or type(exc).__name__)
        left = await self._pending_or_none()
        if left:
            durable = isinstance(self._queue, RedisWriteQueue)
            log.error(
                "write-behind stopped with writes not stored",
                pending=left,
                outcome="kept in the queue for the next start" if durable else "lost",
            )
        self._task = None
        await self._queue.close()

    async def _pending_or_none(self) -> int | None:
        try:
            return await self._queue.pending()
        except CacheBackendError:
            return None

    # --- the flusher --------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                now = self._clock()
                batch = await self._queue.claim(now, self._batch_size, now + self._lease)
                if batch:
                    await self._store(batch, retry_at=None)
                    continue
                next_due = await self._queue.next_due()
            except CacheBackendError as exc:
                self._failures += 1
                log.warning("write-behind queue unavailable; retrying", error=exc.message)
                next_due = None
            wait = self._poll if next_due is None else min(self._poll, max(0.0, next_due - self._clock()))
            self._wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _store(self, batch: list[PendingWrite], *, retry_at: float | None) -> int:
        """Store ``batch`` grouped by writer; acknowledge successes, reschedule failures; return stored."""
        groups: dict[str, list[PendingWrite]] = defaultdict(list)
        for write in batch:
            groups[write.writer].append(write)
        stored = 0
        for name, writes in groups.items():
            writer = self._writers.get(name)
            try:
                if writer is None:
                    raise LookupError(f"no writer registered as {name!r} in this process")
                await writer({w.key: w.value for w in writes})
            except Exception as exc:  # noqa: BLE001 - user code: any failure means "retry later", logged
                self._failures += 1
                await self._reschedule(name, writes, exc, retry_at)
                continue
            self._batches += 1
            self._stored += len(writes)
            stored += len(writes)
            for write in writes:
                self._attempts.pop(f"{write.writer}\x00{write.key}", None)
            await self._queue.ack(writes)
        return stored

    async def _reschedule(
        self, name: str, writes: list[PendingWrite], exc: Exception, retry_at: float | None
    ) -> None:
        attempt = max(self._attempts.get(f"{w.writer}\x00{w.key}", 0) for w in writes) + 1
        for write in writes:
            self._attempts[f"{write.writer}\x00{write.key}"] = attempt
        delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        log.warning(
            "write-behind batch failed; will retry",
            writer=name,
            writes=len(writes),
            attempt=attempt,
            retry_in=round(delay, 3),
            error=f"{type(exc).__name__}: {exc}",
            first_key=writes[0].key[:200],
        )
        await self._queue.reschedule(writes, retry_at if retry_at is not None else self._clock() + delay)
