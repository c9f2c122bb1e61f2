"""``retry(...)``: call again after a failure, with exponential backoff and full jitter, within limits.

The delay before retry *n* (1-based) is drawn uniformly from ``[0, min(max_delay, initial_delay *
multiplier ** (n - 1))]`` ("full jitter"): many clients failing together spread out instead of
hammering the dependency in step. A retry never comes without a sleep, and the number of attempts or
the total time (or both) is always bounded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from mainspring.logging import get_logger
from mainspring.resilience._errors import check_exception_types, check_int, check_seconds, invalid

P = ParamSpec("P")
T = TypeVar("T")

log = get_logger("mainspring.resilience")

#: What decides whether an error is retried: exception classes, or a predicate on the error.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class Retry:
    """A retry policy; apply it to a function (sync or async) as a decorator, or call through it.

    Made by :func:`retry`, which documents the parameters. The policy object holds no per-call state,
    so one policy may decorate many functions and run from many tasks and threads at once.
    """

    def __init__(
        self,
        *,
        max_attempts: int | None,
        max_time: float | None,
        initial_delay: float,
        max_delay: float,
        multiplier: float,
        retry_on: RetryOn,
        dont_retry_on: type[BaseException] | tuple[type[BaseException], ...],
        sleep: Callable[[float], Awaitable[None]],
        sync_sleep: Callable[[float], None],
        clock: Callable[[], float],
        jitter: Callable[[], float],
    ) -> None:
        """Validate and keep the settings; see :func:`retry`."""
        if max_attempts is None and max_time is None:
            raise invalid("retry", "max_attempts", None, "set (or max_time set): retries must be bounded")
        self.max_attempts = (
            None if max_attempts is None else check_int("retry", "max_attempts", max_attempts, minimum=1)
        )
        self.max_time = None if max_time is None else check_seconds("retry", "max_time", max_time)
        self.initial_delay = check_seconds("retry", "initial_delay", initial_delay)
        self.max_delay = check_seconds("retry", "max_delay", max_delay)
        if self.max_delay < self.initial_delay:
            raise invalid("retry", "max_delay", max_delay, f">= initial_delay ({initial_delay})")
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, int | float)
            or not 1 <= multiplier <= 100
        ):
            raise invalid("retry", "multiplier", multiplier, "a number between 1 and 100")
        self.multiplier = float(multiplier)
        if callable(retry_on) and not isinstance(retry_on, type):
            self._predicate: Callable[[BaseException], bool] | None = retry_on
            self.retry_on: tuple[type[BaseException], ...] = ()
        else:
            self._predicate = None
            self.retry_on = check_exception_types("retry", "retry_on", retry_on)
        self.dont_retry_on = check_exception_types("retry", "dont_retry_on", dont_retry_on)
        self._sleep = sleep
        self._sync_sleep = sync_sleep
        self._clock = clock
        self._jitter = jitter

    def should_retry(self, error: BaseException) -> bool:
        """Say whether ``error`` is worth another attempt (limits aside).

        Never for ``BaseException``s that are not ``Exception`` (cancellation, ``KeyboardInterrupt``);
        never for ``dont_retry_on``; otherwise as ``retry_on`` says.
        """
        if not isinstance(error, Exception) or isinstance(error, self.dont_retry_on):
            return False
        if self._predicate is not None:
            return bool(self._predicate(error))
        return isinstance(error, self.retry_on)

    def backoff(self, retry_number: int) -> float:
        """Return the cap of the delay before retry ``retry_number`` (1 for the first retry)."""
        # Bounded exponent: a huge retry_number must not overflow a float on the way to max_delay.
        exponent = min(retry_number - 1, 1024)
        try:
            cap = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            cap = self.max_delay
        return min(self.max_delay, cap)

    def _next_delay(self, error: BaseException, attempt: int, started: float, name: str) -> float | None:
        """Return the delay before the next attempt, or ``None`` to give up (and log either way)."""
        if not self.should_retry(error):
            return None
        if self.max_attempts is not None and attempt >= self.max_attempts:
            reason = f"{attempt} attempt(s) made, max_attempts={self.max_attempts}"
        else:
            delay = self._jitter() * self.backoff(attempt)
            elapsed = self._clock() - started
            if self.max_time is None or elapsed + delay < self.max_time:
                log.warning(
                    "retrying after error",
                    function=name,
                    attempt=attempt,
                    delay=round(delay, 6),
                    error=type(error).__name__,
                )
                return delay
            reason = f"{elapsed:.3f} s spent, next delay {delay:.3f} s would pass max_time={self.max_time:g}"
        log.warning("retry gave up", function=name, attempts=attempt, error=type(error).__name__)
        error.add_note(f"mainspring retry: gave up on {name} ({reason})")
        return None

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying as the policy says; re-raise the last error."""
        name = getattr(fn, "__qualname__", repr(fn))
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                delay = self._next_delay(error, attempt, started, name)
                if delay is None:
                    raise
            await self._sleep(delay)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as the policy says (sleeping the thread between)."""
        name = getattr(fn, "__qualname__", repr(fn))
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                delay = self._next_delay(error, attempt, started, name)
                if delay is None:
                    raise
            self._sync_sleep(delay)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``: a coroutine function gets the async loop, anything else the sync one."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def retried_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return retried_async

        @functools.wraps(fn)
        def retried(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return retried


def retry(
    *,
    max_attempts: int | None = 3,
    max_time: float | None = None,
    initial_delay: float = 0.1,
    max_delay: float = 10.0,
    multiplier: float = 2.0,
    retry_on: RetryOn = Exception,
    dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    sync_sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> Retry:
    """Return a retry policy: ``@retry(max_attempts=5)`` on a sync or async function.

    - ``max_attempts``: total calls including the first (``None``: unlimited, then ``max_time`` is
      required). ``max_time``: seconds from the first call after which no new attempt starts; a retry
      whose delay would end past it is not made. At least one of the two must be set.
    - ``initial_delay``, ``multiplier``, ``max_delay``: the delay cap before retry *n* is
      ``min(max_delay, initial_delay * multiplier ** (n - 1))``; the delay is uniform in ``[0, cap]``.
    - ``retry_on``: exception classes to retry (default: any ``Exception``), or a predicate
      ``(error) -> bool``. ``dont_retry_on``: classes never retried, even if ``retry_on`` matches.
    - ``sleep`` / ``sync_sleep`` / ``clock`` / ``jitter``: injectable for tests (``jitter`` returns a
      float in ``[0, 1)``).

    After the last attempt the last error is re-raised unchanged (same type, same traceback), with a
    note (PEP 678) saying why retrying stopped, so ``except`` clauses written for the call still work.
    Each retry is logged at warning level on ``mainspring.resilience`` with ``attempt`` and ``delay``.
    Bad arguments raise :class:`~mainspring.errors.ValidationError` here, not at the first call.
    """
    return Retry(
        max_attempts=max_attempts,
        max_time=max_time,
        initial_delay=initial_delay,
        max_delay=max_delay,
        multiplier=multiplier,
        retry_on=retry_on,
        dont_retry_on=dont_retry_on,
        sleep=sleep,
        sync_sleep=sync_sleep,
        clock=clock,
        jitter=jitter,
    )
