"""``Bulkhead``: at most N calls at once, a bounded queue behind them, and a limit on the wait.

A bulkhead keeps one slow dependency from taking every worker of the service: calls beyond
``max_concurrent`` wait in a first-come, first-served queue of at most ``max_queue``; a call that finds
the queue full, or waits longer than ``queue_timeout``, fails at once with :class:`BulkheadFullError`.
For asyncio code on one event loop (the futures it queues belong to the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar

from mainspring.resilience._errors import BulkheadFullError, check_int, check_seconds, invalid

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BulkheadStats:
    """A snapshot of a bulkhead: its limits, what is running and waiting now, and counters."""

    name: str
    max_concurrent: int
    max_queue: int
    active: int
    queued: int
    #: Calls let in (at once or after waiting), refused because the queue was full, and timed out.
    accepted: int
    rejected: int
    timed_out: int


class Bulkhead:
    """Limit concurrent calls; a decorator for coroutine functions and an async context manager."""

    def __init__(
        self, name: str, max_concurrent: int, *, max_queue: int = 0, queue_timeout: float | None = 5.0
    ) -> None:
        """Allow ``max_concurrent`` (>= 1) calls at once and ``max_queue`` (>= 0) waiting ones.

        ``queue_timeout`` is how long (seconds, > 0) a call may wait for a slot; ``None`` waits as long
        as it takes (only sensible with a caller-side deadline). Bad values raise
        :class:`~mainspring.errors.ValidationError`.
        """
        if not isinstance(name, str) or not name.strip():
            raise invalid("Bulkhead", "name", name, "a non-empty string")
        self.name = name
        self.max_concurrent = check_int("Bulkhead", "max_concurrent", max_concurrent, minimum=1)
        self.max_queue = check_int("Bulkhead", "max_queue", max_queue, minimum=0)
        self.queue_timeout = (
            None if queue_timeout is None else check_seconds("Bulkhead", "queue_timeout", queue_timeout)
        )
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._accepted = self._rejected = self._timed_out = 0

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; raise :class:`BulkheadFullError` if not."""
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            self._accepted += 1
            return
        if len(self._waiters) >= self.max_queue:
            self._rejected += 1
            raise BulkheadFullError(
                f"bulkhead {self.name!r} is full ({self.max_concurrent} calls running, "
                f"{len(self._waiters)} of {self.max_queue} queue places taken); retry later or raise "
                "max_concurrent / max_queue if the dependency can take more",
                name=self.name,
                details={"max_concurrent": self.max_concurrent, "max_queue": self.max_queue},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we gave up: pass it on rather than leak it.
                self._release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                self._timed_out += 1
                raise BulkheadFullError(
                    f"bulkhead {self.name!r}: no slot freed within the {self.queue_timeout:g} s queue "
                    "timeout; the calls it guards are slow or too many",
                    name=self.name,
                    details={"queue_timeout": self.queue_timeout},
                ) from None
            raise
        self._accepted += 1

    def release(self) -> None:
        """Give a slot back (to the first caller in the queue, if any)."""
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; _active is unchanged
                return
        self._active -= 1

    def stats(self) -> BulkheadStats:
        """Return a snapshot of the limits, the running and waiting calls, and the counters."""
        return BulkheadStats(
            name=self.name,
            max_concurrent=self.max_concurrent,
            max_queue=self.max_queue,
            active=self._active,
            queued=sum(not w.done() for w in self._waiters),
            accepted=self._accepted,
            rejected=self._rejected,
            timed_out=self._timed_out,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` inside the bulkhead."""
        await self.acquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate a coroutine function so that every call takes a slot."""
        if not inspect.iscoroutinefunction(fn):
            raise invalid("Bulkhead", "decorated function", fn, "a coroutine function (async def)")

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return limited

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, max_concurrent={self.max_concurrent}, max_queue={self.max_queue})"
