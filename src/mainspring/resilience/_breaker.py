"""``CircuitBreaker``: stop calling a dependency that fails or is slow, and probe it before trusting it.

CLOSED, calls go through and their outcomes fill a sliding window (the last N calls, or the last N
seconds in 1-second buckets). Once the window holds ``minimum_calls`` outcomes and the failure rate or
the slow-call rate reaches its threshold, the breaker opens: calls fail at once with
:class:`CircuitOpenError`. After ``open_duration`` it goes HALF_OPEN and lets ``half_open_max_calls``
probes through (never more, however many tasks or threads ask); when all of them have finished their
rates decide: CLOSED again (window emptied) or OPEN for another ``open_duration``.

Every outcome carries the "epoch" in which its call was admitted; outcomes from an earlier epoch (a
slow call that started before the circuit opened) are counted in the totals but do not move the state.
"""

from __future__ import annotations

import enum
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from mainspring.logging import get_logger
from mainspring.resilience._errors import (
    CircuitOpenError,
    check_exception_types,
    check_int,
    check_seconds,
    invalid,
)
from mainspring.resilience._window import CountWindow, TimeWindow, WindowTotals

P = ParamSpec("P")
T = TypeVar("T")

log = get_logger("mainspring.resilience")

#: retry_after of a refusal in HALF_OPEN while the permitted probes are still running.
_PROBE_PENDING_RETRY_AFTER = 1.0


class CircuitState(enum.StrEnum):
    """The state of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A state transition, as passed to listeners: which breaker, from, to, when (its clock) and why."""

    name: str
    previous: CircuitState
    state: CircuitState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitBreakerStats:
    """A snapshot of a breaker: its state, its window, and counters since it was made."""

    name: str
    state: CircuitState
    #: Outcomes in the sliding window (CLOSED) and their rates.
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float
    slow_call_rate: float
    #: Counters since construction (or the last ``reset()``).
    successful_calls: int
    failed_calls: int
    slow_calls: int
    ignored_calls: int
    rejected_calls: int
    times_opened: int


class CallPermit:
    """One admitted call, from :meth:`CircuitBreaker.acquire`: report its outcome exactly once.

    For callers that decide themselves what a failure is (an HTTP client counting 5xx responses, a
    consumer counting rejected messages) instead of letting an exception say it. Only the first
    report counts; later ones are ignored, so a ``finally: permit.release()`` after a report is safe.
    """

    __slots__ = ("_breaker", "epoch", "probe", "settled", "started")

    def __init__(self, breaker: CircuitBreaker, epoch: int, started: float, probe: bool) -> None:
        self._breaker = breaker
        self.epoch = epoch
        self.started = started
        self.probe = probe
        #: Whether an outcome was reported already.
        self.settled = False

    def record_success(self) -> None:
        """Report that the call succeeded (it may still count as slow)."""
        self._breaker._settle(self, failed=False)

    def record_failure(self) -> None:
        """Report that the call failed."""
        self._breaker._settle(self, failed=True)

    def release(self) -> None:
        """Report nothing: the call counts neither way (cancelled, or an error to ignore)."""
        self._breaker._settle(self, failed=None)

    def record(self, error: BaseException | None) -> None:
        """Report the outcome as the breaker's ``record_on`` / ``ignore_on`` classify ``error``."""
        self._breaker._finish(self, error)


class CircuitBreaker:
    """A circuit breaker around calls to one dependency; a decorator and a (sync or async) context manager.

    ``@breaker`` wraps sync and async functions; ``async with breaker:`` and ``with breaker:`` wrap a
    block (each task or thread has its own call in flight, so one breaker serves them all). When the
    breaker refuses a call it raises :class:`CircuitOpenError` with ``retry_after`` in seconds.

    Thread-safe: the state lives behind a lock that is never held across a call or an ``await``.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float = 0.5,
        slow_call_rate_threshold: float = 1.0,
        slow_call_duration: float = 60.0,
        window_type: Literal["count", "time"] = "count",
        window_size: int | None = None,
        minimum_calls: int = 10,
        open_duration: float = 30.0,
        half_open_max_calls: int = 3,
        record_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        ignore_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure the breaker; bad values raise :class:`~mainspring.errors.ValidationError`.

        - ``failure_rate_threshold``, ``slow_call_rate_threshold``: rates in ``(0, 1]`` at or above
          which the circuit opens. A call is slow when it takes longer than ``slow_call_duration`` s.
        - ``window_type``: ``"count"`` (the last ``window_size`` calls, default 100) or ``"time"``
          (the calls that ended in the last ``window_size`` seconds, default 60).
        - ``minimum_calls``: outcomes the window needs before the rates count.
        - ``open_duration``: seconds OPEN before probing; ``half_open_max_calls``: probes allowed.
        - ``record_on``: errors that count as failures (others count as successes); ``ignore_on``:
          errors that count as neither (they win over ``record_on``). Cancellation is always ignored.
        - ``clock``: monotonic seconds; inject a fake one in tests.
        """
        owner = "CircuitBreaker"
        if not isinstance(name, str) or not name.strip():
            raise invalid(owner, "name", name, "a non-empty string")
        self.name = name
        self.failure_rate_threshold = _check_rate(owner, "failure_rate_threshold", failure_rate_threshold)
        self.slow_call_rate_threshold = _check_rate(
            owner, "slow_call_rate_threshold", slow_call_rate_threshold
        )
        self.slow_call_duration = check_seconds(owner, "slow_call_duration", slow_call_duration)
        if window_type == "count":
            size = check_int(owner, "window_size", 100 if window_size is None else window_size, minimum=1)
            self._window: CountWindow | TimeWindow = CountWindow(size)
        elif window_type == "time":
            size = check_int(owner, "window_size", 60 if window_size is None else window_size, minimum=1)
            self._window = TimeWindow(size)
        else:
            raise invalid(owner, "window_type", window_type, "'count' or 'time'")
        self.window_type = window_type
        self.window_size = size
        self.minimum_calls = check_int(owner, "minimum_calls", minimum_calls, minimum=1)
        if window_type == "count" and self.minimum_calls > size:
            raise invalid(
                owner, "minimum_calls", minimum_calls, f"<= window_size ({size}) for a count window"
            )
        self.open_duration = check_seconds(owner, "open_duration", open_duration)
        self.half_open_max_calls = check_int(owner, "half_open_max_calls", half_open_max_calls, minimum=1)
        self.record_on = check_exception_types(owner, "record_on", record_on)
        self.ignore_on = check_exception_types(owner, "ignore_on", ignore_on)
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[StateChange], None]] = []
        self._permits: ContextVar[tuple[CallPermit, ...]] = ContextVar(
            f"mainspring.breaker:{name}", default=()
        )
        self._reset_state()

    def _reset_state(self) -> None:
        self._state = CircuitState.CLOSED
        self._epoch = 0
        self._opened_at = 0.0
        self._probes_started = 0
        self._probes_done = 0
        self._probe_failures = 0
        self._probe_slow = 0
        self._window.clear()
        self._successes = self._failures = self._slow = self._ignored = self._rejected = self._opened = 0

    # -- state machine (call with the lock held; return the transitions to announce) -------------

    def _move(self, to: CircuitState, now: float, reason: str) -> StateChange:
        change = StateChange(self.name, self._state, to, now, reason)
        self._state = to
        self._epoch += 1
        if to is CircuitState.OPEN:
            self._opened_at = now
            self._opened += 1
        elif to is CircuitState.HALF_OPEN:
            self._probes_started = self._probes_done = self._probe_failures = self._probe_slow = 0
        self._window.clear()
        return change

    def _poll(self, now: float) -> list[StateChange]:
        if self._state is CircuitState.OPEN and now >= self._opened_at + self.open_duration:
            return [self._move(CircuitState.HALF_OPEN, now, f"open for {self.open_duration:g} s")]
        return []

    def _verdict(self, totals: WindowTotals) -> str | None:
        if totals.failure_rate >= self.failure_rate_threshold:
            return f"failure rate {totals.failure_rate:.0%} >= {self.failure_rate_threshold:.0%}"
        if totals.slow_call_rate >= self.slow_call_rate_threshold:
            return f"slow-call rate {totals.slow_call_rate:.0%} >= {self.slow_call_rate_threshold:.0%}"
        return None

    def _acquire(self) -> CallPermit:
        with self._lock:
            now = self._clock()
            changes = self._poll(now)
            state = self._state
            error: CircuitOpenError | None = None
            permit: CallPermit | None = None
            if state is CircuitState.CLOSED:
                permit = CallPermit(self, self._epoch, now, probe=False)
            elif state is CircuitState.HALF_OPEN and self._probes_started < self.half_open_max_calls:
                self._probes_started += 1
                permit = CallPermit(self, self._epoch, now, probe=True)
            else:
                self._rejected += 1
                if state is CircuitState.OPEN:
                    wait = self._opened_at + self.open_duration - now
                    error = self._open_error(wait, f"open, next probe in {wait:.1f} s")
                else:
                    error = self._open_error(_PROBE_PENDING_RETRY_AFTER, "half-open, probes in flight")
        self._announce(changes)
        if error is not None:
            raise error
        assert permit is not None  # one of the branches above set it
        return permit

    def _open_error(self, retry_after: float, why: str) -> CircuitOpenError:
        return CircuitOpenError(
            f"circuit breaker {self.name!r} refused the call ({why}): the dependency is failing; "
            f"retry after {max(0.0, retry_after):.1f} s",
            name=self.name,
            retry_after=retry_after,
        )

    def _finish(self, permit: CallPermit, error: BaseException | None) -> None:
        """Record the outcome of an admitted call (``error`` is what it raised, if anything)."""
        if error is None:
            self._settle(permit, failed=False)
        elif not isinstance(error, Exception) or isinstance(error, self.ignore_on):
            self._settle(permit, failed=None)
        else:
            self._settle(permit, failed=isinstance(error, self.record_on))

    def _settle(self, permit: CallPermit, *, failed: bool | None) -> None:
        """Count one outcome: ``failed`` True or False, or ``None`` for a call that counts neither way."""
        changes: list[StateChange] = []
        with self._lock:
            if permit.settled:
                return
            permit.settled = True
            now = self._clock()
            if failed is None:
                self._ignored += 1
                # An ignored probe frees its slot, so another caller may probe in its place.
                if permit.probe and permit.epoch == self._epoch:
                    self._probes_started -= 1
            else:
                slow = now - permit.started > self.slow_call_duration
                self._failures += failed
                self._successes += not failed
                self._slow += slow
                if permit.epoch == self._epoch:
                    changes = self._record(now, failed=failed, slow=slow, probe=permit.probe)
        self._announce(changes)

    def _record(self, now: float, *, failed: bool, slow: bool, probe: bool) -> list[StateChange]:
        if self._state is CircuitState.CLOSED:
            self._window.record(now, failed=failed, slow=slow)
            totals = self._window.totals(now)
            if totals.calls >= self.minimum_calls and (reason := self._verdict(totals)):
                return [self._move(CircuitState.OPEN, now, f"{reason} over {totals.calls} calls")]
            return []
        if self._state is CircuitState.HALF_OPEN and probe:
            self._probes_done += 1
            self._probe_failures += failed
            self._probe_slow += slow
            if self._probes_done >= self.half_open_max_calls:
                totals = WindowTotals(self._probes_done, self._probe_failures, self._probe_slow)
                if reason := self._verdict(totals):
                    return [self._move(CircuitState.OPEN, now, f"probes: {reason}")]
                return [self._move(CircuitState.CLOSED, now, f"{self._probes_done} probes passed")]
        return []

    def _announce(self, changes: list[StateChange]) -> None:
        # Outside the lock: a listener may read stats() or call the breaker without deadlocking.
        for change in changes:
            # Opening is news for whoever is on call; probing and closing again are good news.
            emit = log.warning if change.state is CircuitState.OPEN else log.info
            emit(
                "circuit breaker state changed",
                circuit=change.name,
                previous=change.previous.value,
                state=change.state.value,
                reason=change.reason,
            )
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:  # a broken listener must not break the call; logged
                    log.exception("circuit breaker listener failed", circuit=self.name)

    # -- public surface -------------------------------------------------------------------------

    def acquire(self) -> CallPermit:
        """Ask to make one call: return a :class:`CallPermit`, or raise :class:`CircuitOpenError`.

        The low-level form behind the decorator and the context managers. Report the outcome on the
        permit exactly once, in a ``finally`` if need be: a permit never reported keeps a half-open
        probe slot taken.
        """
        return self._acquire()

    @property
    def state(self) -> CircuitState:
        """The current state (an OPEN breaker whose ``open_duration`` has passed reports HALF_OPEN)."""
        with self._lock:
            changes = self._poll(self._clock())
            state = self._state
        self._announce(changes)
        return state

    def add_listener(self, listener: Callable[[StateChange], None]) -> Callable[[], None]:
        """Call ``listener(change)`` on every state change; return a function that removes it.

        Listeners run in the thread or task whose call caused the change, after the state moved;
        keep them quick. An error in a listener is logged and does not reach the caller.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def stats(self) -> CircuitBreakerStats:
        """Return a snapshot of the state, the window and the counters."""
        with self._lock:
            now = self._clock()
            changes = self._poll(now)
            totals = self._window.totals(now)
            stats = CircuitBreakerStats(
                name=self.name,
                state=self._state,
                window_calls=totals.calls,
                window_failures=totals.failures,
                window_slow_calls=totals.slow,
                failure_rate=totals.failure_rate,
                slow_call_rate=totals.slow_call_rate,
                successful_calls=self._successes,
                failed_calls=self._failures,
                slow_calls=self._slow,
                ignored_calls=self._ignored,
                rejected_calls=self._rejected,
                times_opened=self._opened,
            )
        self._announce(changes)
        return stats

    def reset(self) -> None:
        """Close the circuit and forget the window and the counters (operators' big red button)."""
        with self._lock:
            self._reset_state()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        permit = self._acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._finish(permit, error)
            raise
        self._finish(permit, None)
        return result

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        permit = self._acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._finish(permit, error)
            raise
        self._finish(permit, None)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or async function so that every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return guarded

    def __enter__(self) -> CircuitBreaker:
        permit = self._acquire()
        self._permits.set((*self._permits.get(), permit))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, permit = self._permits.get()
        self._permits.set(tuple(rest))
        self._finish(permit, exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value!r})"


def _check_rate(owner: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise invalid(owner, field, value, "a rate in (0, 1]")
    return float(value)
