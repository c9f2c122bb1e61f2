"""Pieces of ``get_or_set``: the per-call load options, early-refresh decisions, and owned tasks."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from mainspring.cache._codec import Entry
from mainspring.cache._errors import CacheLoaderTimeoutError
from mainspring.cache._stats import Counters
from mainspring.errors import ValidationError
from mainspring.logging import get_logger

__all__ = ["LoadSpec", "TaskSet", "check_fraction", "check_seconds", "fail_safe", "refresh_due", "seconds_or"]

log = get_logger("mainspring.cache")


def check_seconds(name: str, value: object, *, optional: bool = False, zero: bool = False) -> float | None:
    """Return ``value`` as seconds: finite, > 0 (>= 0 with ``zero``), or ``None`` if ``optional``."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or (value < 0 if zero else value <= 0):  # type: ignore[operator]
        bound = ">= 0" if zero else "> 0"
        raise ValidationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}",
            errors=[{"loc": [name], "msg": f"must be a finite number {bound}", "input": repr(value)[:80]}],
            details={"field": name},
        )
    return float(cast(float, value))


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` if it is a number from 0 to below 1, else raise :class:`ValidationError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValidationError(
            f"{name} must be a number from 0 to below 1, got {value!r}", details={"field": name}
        )
    return float(value)


def seconds_or(name: str, value: float | None, default: float, *, zero: bool = False) -> float:
    """Return ``default`` when ``value`` is ``None``, else ``value`` checked as by :func:`check_seconds`."""
    return default if value is None else cast(float, check_seconds(name, value, zero=zero))


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """The resolved options of one ``get_or_set`` call (cache defaults filled in)."""

    key: str
    ttl: float | None
    tags: tuple[str, ...]
    negative_ttl: float | None
    cache_none: bool
    stale_ttl: float
    timeout: float | None
    lock: bool
    lock_ttl: float
    lock_wait: float


def refresh_due(entry: Entry, now: float, beta: float, ahead: float, rng: random.Random) -> bool:
    """Say whether a fresh ``entry`` should be reloaded in the background now.

    XFetch (Vattani et al.): refresh with a probability that grows as expiry nears, faster for values
    that take long to compute: due when ``now - delta * beta * ln(u) >= fresh_until``, ``u`` uniform in
    (0, 1]. Refresh-ahead: due once no more than ``ahead`` (a fraction) of the entry's ttl is left.
    """
    if entry.fresh_until == math.inf:
        return False
    if ahead > 0 and entry.ttl is not None and entry.fresh_until - now <= entry.ttl * ahead:
        return True
    if beta > 0 and entry.delta > 0:
        return now - entry.delta * beta * math.log(1.0 - rng.random()) >= entry.fresh_until
    return False


def fail_safe(
    spec: LoadSpec,
    stale: Entry | None,
    exc: Exception,
    now: float,
    counters: Counters,
    cache: str,
    *,
    timed_out: bool,
) -> Any:
    """Return the value standing in for a failed load, or raise the failure.

    ``stale`` stands in while ``now`` is within its stale window: counted as ``stale_served`` once it
    is past its ttl, as a ``refresh_errors`` when it is still fresh (a failed early refresh). Without
    one, a timeout raises :class:`CacheLoaderTimeoutError` and any other error is re-raised.
    """
    if timed_out and spec.timeout is not None:
        reason = f"timed out after {spec.timeout:g} s"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if stale is not None and now < stale.fresh_until + stale.stale_ttl:
        if now >= stale.fresh_until:
            counters.stale_served += 1
            log.warning(
                "cache loader failed; serving the stale value",
                cache=cache,
                key=spec.key,
                error=reason,
                stale_for=round(now - stale.fresh_until, 3),
            )
        else:
            counters.refresh_errors += 1
            log.warning(
                "cache refresh failed; keeping the current value", cache=cache, key=spec.key, error=reason
            )
        return stale.value
    if timed_out:
        raise CacheLoaderTimeoutError(
            f"the cache loader for {spec.key!r} {reason} and no stale value could stand in; raise "
            "loader_timeout, or set stale_ttl to serve the last value meanwhile",
            details={"key": spec.key[:200], "timeout": spec.timeout},
        ) from exc
    raise exc


class TaskSet:
    """The background tasks of one cache, keyed so that one key has at most one load in flight.

    Every task is named, kept until done, and has its exception retrieved (``on_error`` is told about
    failures nobody awaited); :meth:`drain` waits for them on stop and cancels what is left.
    """

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        """Keep ``on_error(key, exc)`` for failed tasks of background work."""
        self._flights: dict[str, asyncio.Task[Any]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._on_error = on_error

    def __len__(self) -> int:
        """Return how many tasks are running."""
        return len(self._flights) + len(self._background)

    def flight(self, key: str) -> asyncio.Task[Any] | None:
        """Return the load in flight for ``key``, if any."""
        return self._flights.get(key)

    def start(
        self, key: str, coro: Coroutine[Any, Any, Any], *, name: str, background: bool
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as the flight of ``key``; a ``background`` task's failure goes to ``on_error``."""
        task = asyncio.create_task(coro, name=name)
        self._flights[key] = task
        if background:
            self._background.add(task)
        task.add_done_callback(lambda done: self._done(key, done, background))
        return task

    def _done(self, key: str, task: asyncio.Task[Any], background: bool) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        self._background.discard(task)
        if task.cancelled():
            return
        # Retrieving the exception also keeps asyncio from logging "exception was never retrieved"
        # when every caller that awaited the flight was cancelled meanwhile.
        exc = task.exception()
        if exc is not None and background:
            self._on_error(key, exc)

    async def drain(self, wait: float) -> int:
        """Wait up to ``wait`` seconds for every task, then cancel and await the rest; return how many."""
        tasks = {*self._flights.values(), *self._background}
        if not tasks:
            return 0
        _done, pending = await asyncio.wait(tasks, timeout=wait)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)
