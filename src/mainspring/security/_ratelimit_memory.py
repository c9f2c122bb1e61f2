"""The in-process rate-limit backend and the exact integer arithmetic of each strategy.

The step functions are pure (state, now, limit) -> (state, expiry, decision) so the property tests can
drive them with a fake clock; the Redis scripts implement the same formulas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mainspring.security._ratelimit_types import Decision, Limit, Strategy

__all__ = ["MemoryBackend", "fixed_window_step", "gcra_step", "sliding_window_step", "wall_clock_us"]

_US = 1_000_000
# Expired keys are swept every this many decisions, so a stream of one-off keys (IPs) can't grow forever.
_SWEEP_EVERY = 4096

State = tuple[int, ...]
Step = tuple[State, int, Decision]


def wall_clock_us() -> int:
    """Return the wall-clock time in integer microseconds."""
    return time.time_ns() // 1_000


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _decision(limit: Limit, allowed: bool, remaining: int, reset_us: int, retry_us: int) -> Decision:
    return Decision(
        allowed=allowed,
        limit=limit.capacity,
        remaining=max(0, remaining),
        reset_after=max(0, reset_us) / _US,
        retry_after=0.0 if allowed else max(0, retry_us) / _US,
        window=limit.per,
    )


def fixed_window_step(state: State | None, now: int, limit: Limit) -> Step:
    """One fixed-window decision. State: (window index, count)."""
    per, rate = limit.per_us, limit.rate
    window = now // per
    count = state[1] if state is not None and state[0] == window else 0
    allowed = count < rate
    if allowed:
        count += 1
    end = (window + 1) * per
    return (window, count), end, _decision(limit, allowed, rate - count, end - now, end - now)


def sliding_window_step(state: State | None, now: int, limit: Limit) -> Step:
    """One sliding-window-counter decision. State: (window index, current count, previous count).

    The estimate is ``previous * (per - elapsed) / per + current``; a request is allowed when the estimate
    including it stays within ``rate``. Compared multiplied by ``per`` so everything is integral.
    """
    per, rate = limit.per_us, limit.rate
    window = now // per
    current = previous = 0
    if state is not None:
        if state[0] == window:
            current, previous = state[1], state[2]
        elif state[0] == window - 1:
            previous = state[1]
    elapsed = now - window * per
    weight = per - elapsed  # in 1..per: how much of the previous window still overlaps
    allowed = previous * weight + (current + 1) * per <= rate * per
    if allowed:
        current += 1
    end = (window + 1) * per
    remaining = (rate * per - previous * weight - current * per) // per
    if current > 0:
        reset = end - now + per
    elif previous > 0:
        reset = end - now
    else:
        reset = 0
    retry = 0
    if not allowed:
        if current + 1 <= rate:
            # Only the previous window's share blocks: wait until it has faded enough.
            at = per - (rate - current - 1) * per // previous
            retry = at - elapsed
        else:
            # The current window alone is full: it becomes "previous" next window, then fades.
            at = per - (rate - 1) * per // current
            retry = end - now + at
    return (window, current, previous), end + per, _decision(limit, allowed, remaining, reset, retry)


def gcra_step(state: State | None, now: int, limit: Limit) -> Step:
    """One GCRA decision. State: (theoretical arrival time,) in microseconds x rate.

    Times are scaled by ``rate`` so the emission interval (``per / rate``) is the integer ``per``.
    """
    per, rate, burst = limit.per_us, limit.rate, limit.capacity
    now_s = now * rate
    tat = max(state[0], now_s) if state is not None else now_s
    new_tat = tat + per
    allow_at = new_tat - burst * per
    allowed = now_s >= allow_at
    if allowed:
        tat = new_tat
    remaining = (now_s - (tat - burst * per)) // per
    reset = _ceil_div(tat - now_s, rate)
    retry = _ceil_div(allow_at - now_s, rate)
    return (tat,), _ceil_div(tat, rate), _decision(limit, allowed, remaining, reset, retry)


_STEPS: dict[Strategy, Callable[[State | None, int, Limit], Step]] = {
    Strategy.FIXED_WINDOW: fixed_window_step,
    Strategy.SLIDING_WINDOW: sliding_window_step,
    Strategy.GCRA: gcra_step,
}


class MemoryBackend:
    """Rate-limit state in a dict: for tests and single-process services.

    Each decision runs without an ``await``, so it is atomic on the event loop. ``clock`` returns integer
    microseconds (tests pass a fake one).
    """

    def __init__(self, *, clock: Callable[[], int] = wall_clock_us) -> None:
        """Create an empty store reading time from ``clock``."""
        self._clock = clock
        self._entries: dict[str, tuple[int, State]] = {}
        self._ops = 0

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Drop all state."""
        self._entries.clear()

    async def decide(self, key: str, limit: Limit) -> Decision:
        """Count one request for ``key`` under ``limit`` and return the decision."""
        now = self._clock()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._sweep(now)
        entry = self._entries.get(key)
        state = entry[1] if entry is not None and entry[0] > now else None
        new_state, expires, decision = _STEPS[limit.strategy](state, now, limit)
        self._entries[key] = (expires, new_state)
        return decision

    async def reset(self, key: str) -> None:
        """Forget ``key``'s state."""
        self._entries.pop(key, None)

    def _sweep(self, now: int) -> None:
        expired = [key for key, (expires, _) in self._entries.items() if expires <= now]
        for key in expired:
            del self._entries[key]
