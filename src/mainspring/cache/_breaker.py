"""A small circuit breaker for cache backends: stop calling a failing server, probe it now and then.

Private to the cache: the resilience subsystem will bring the general one. Closed, every call goes
through; ``failures`` consecutive failures open it, and calls are refused at once (the cache degrades
to a miss without waiting for a timeout); after ``cooldown`` seconds one call goes through as a probe
(half-open): its success closes the circuit, its failure opens it for another cooldown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Counts consecutive failures of one backend and says whether the next call may go through.

    Thread-safe (the synchronous Redis cache is used from many threads); cheap when closed.
    """

    def __init__(
        self, failures: int = 5, cooldown: float = 5.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Open after ``failures`` consecutive failures; probe again ``cooldown`` seconds later."""
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None
        #: How many times the circuit opened (a metric for stats and tests).
        self.opened = 0
        #: ``True`` while closed with no failure since the last success: then :meth:`allow` says yes
        #: and :meth:`success` changes nothing, so a hot path may read this flag instead of calling them.
        self.quiet = True

    @property
    def state(self) -> State:
        """``closed``, ``open`` (calls refused) or ``half-open`` (a probe may go, or is going)."""
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() < self._opened_at + self.cooldown else "half-open"

    def retry_in(self) -> float:
        """Return the seconds until the next probe may go (0 when closed or due)."""
        opened = self._opened_at
        return 0.0 if opened is None else max(0.0, opened + self.cooldown - self._clock())

    def allow(self) -> bool:
        """Say whether a call may go to the backend now (in half-open state: one probe at a time)."""
        if self._opened_at is None:
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            now = self._clock()
            if now < self._opened_at + self.cooldown:
                return False
            # A probe whose outcome never came back (its caller was cancelled) must not block the
            # circuit forever: after another cooldown a new probe may go.
            if self._probe_at is not None and now < self._probe_at + self.cooldown:
                return False
            self._probe_at = now
            return True

    def success(self) -> bool:
        """Record a call that reached the backend; return ``True`` if this closed an open circuit."""
        if self.quiet:
            return False  # closed, no failure counted: nothing to reset
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive = 0
            self._opened_at = self._probe_at = None
            self.quiet = True
            return was_open

    def failure(self) -> bool:
        """Record a failed call; return ``True`` if this opened the circuit (closed or probing before)."""
        with self._lock:
            self.quiet = False
            self._consecutive += 1
            now = self._clock()
            if self._opened_at is not None:
                if self._probe_at is None:
                    return False  # a call from before the circuit opened: already counted
                self._opened_at, self._probe_at = now, None
                self.opened += 1
                return True
            if self._consecutive >= self.failures:
                self._opened_at = now
                self.opened += 1
                return True
            return False
