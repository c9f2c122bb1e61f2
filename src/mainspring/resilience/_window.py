"""Sliding windows of call outcomes for the circuit breaker: the last N calls, or the last N seconds.

Both keep running totals, so recording an outcome and reading the rates cost O(1) (amortised O(1)
for the time window, which drops whole 1-second buckets as they age out). Neither is thread-safe on
its own: the breaker calls them under its lock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Counts over the window: calls recorded, how many failed, how many were slow."""

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """Failed calls / calls (0 with no calls)."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Slow calls / calls (0 with no calls)."""
        return self.slow / self.calls if self.calls else 0.0


class CountWindow:
    """The outcomes of the last ``size`` calls, in a ring."""

    def __init__(self, size: int) -> None:
        """Keep the last ``size`` (>= 1) outcomes."""
        self.size = size
        self._ring: list[tuple[bool, bool]] = []
        self._next = 0
        self._failures = 0
        self._slow = 0

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """Add one outcome, evicting the oldest if the window is full (``now`` is unused)."""
        if len(self._ring) < self.size:
            self._ring.append((failed, slow))
        else:
            old_failed, old_slow = self._ring[self._next]
            self._failures -= old_failed
            self._slow -= old_slow
            self._ring[self._next] = (failed, slow)
            self._next = (self._next + 1) % self.size
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> WindowTotals:
        """Return the counts over the window."""
        return WindowTotals(len(self._ring), self._failures, self._slow)

    def clear(self) -> None:
        """Forget every outcome."""
        self._ring.clear()
        self._next = self._failures = self._slow = 0


class TimeWindow:
    """The outcomes of the calls that ended in the last ``size`` seconds, in 1-second buckets.

    A call ending at clock time ``t`` lands in bucket ``floor(t)``; at time ``now`` the window holds
    the buckets ``floor(now) - size + 1 .. floor(now)``, so an outcome counts for between ``size - 1``
    and ``size`` seconds.
    """

    def __init__(self, size: int) -> None:
        """Keep ``size`` (>= 1) one-second buckets."""
        self.size = size
        # Each bucket: [second, calls, failures, slow]; oldest first.
        self._buckets: deque[list[int]] = deque()
        self._calls = self._failures = self._slow = 0

    def _expire(self, now: float) -> None:
        oldest_kept = math.floor(now) - self.size + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            _, calls, failures, slow = buckets.popleft()
            self._calls -= calls
            self._failures -= failures
            self._slow -= slow

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        """Add one outcome at clock time ``now``."""
        self._expire(now)
        second = math.floor(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] >= second:
            # A clock read a moment earlier by another thread may land here late: same bucket.
            bucket = buckets[-1]
        else:
            bucket = [second, 0, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow
        self._calls += 1
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> WindowTotals:
        """Return the counts over the window as of clock time ``now``."""
        self._expire(now)
        return WindowTotals(self._calls, self._failures, self._slow)

    def clear(self) -> None:
        """Forget every outcome."""
        self._buckets.clear()
        self._calls = self._failures = self._slow = 0
