"""Rate-limit arithmetic against brute-force models driven by a fake clock (memory backend)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainspring.security import Limit, RateLimiter, Strategy
from mainspring.security._ratelimit_memory import fixed_window_step, gcra_step, sliding_window_step


class FakeClock:
    """Integer microseconds that only move when the test says so."""

    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def model_fixed(log: list[int], now: int, limit: Limit) -> tuple[bool, int]:
    """Fixed window recomputed from the full log of allowed requests."""
    window = now // limit.per_us
    count = sum(1 for t in log if t // limit.per_us == window)
    allowed = count < limit.rate
    return allowed, limit.rate - count - (1 if allowed else 0)


def model_sliding(log: list[int], now: int, limit: Limit) -> tuple[bool, int]:
    """Sliding-window counter recomputed from the full log: previous window weighted by overlap."""
    per, rate = limit.per_us, limit.rate
    window = now // per
    current = sum(1 for t in log if t // per == window)
    previous = sum(1 for t in log if t // per == window - 1)
    weight = Fraction(per - (now - window * per), per)
    allowed = previous * weight + current + 1 <= rate
    current += 1 if allowed else 0
    remaining = rate - previous * weight - current
    return allowed, max(0, int(remaining // 1))


def model_bucket(log: list[int], now: int, limit: Limit) -> tuple[bool, int]:
    """A token bucket replayed from the log with exact fractions: burst tokens, refilled at rate/per."""
    rate_per_us = Fraction(limit.rate, limit.per_us)
    # Each logged request consumed one token at its time.
    tokens = Fraction(limit.capacity)
    last: int | None = None
    for t in log:
        if last is not None:
            tokens = min(Fraction(limit.capacity), tokens + (t - last) * rate_per_us)
        tokens -= 1
        last = t
    if last is not None:
        tokens = min(Fraction(limit.capacity), tokens + (now - last) * rate_per_us)
    allowed = tokens >= 1
    if allowed:
        tokens -= 1
    return allowed, int(tokens // 1)


MODELS = {
    Strategy.FIXED_WINDOW: model_fixed,
    Strategy.SLIDING_WINDOW: model_sliding,
    Strategy.GCRA: model_bucket,
}
STEPS = {
    Strategy.FIXED_WINDOW: fixed_window_step,
    Strategy.SLIDING_WINDOW: sliding_window_step,
    Strategy.GCRA: gcra_step,
}

limits_st = st.builds(
    lambda strategy, rate, per_ms, burst: Limit(
        rate, per_ms / 1000, burst=burst if strategy is Strategy.GCRA else None, strategy=strategy
    ),
    st.sampled_from(list(Strategy)),
    st.integers(1, 8),
    st.integers(1, 5_000),
    st.none() | st.integers(1, 8),
)
# Gaps in microseconds: many zero gaps (bursts), some around typical window sizes.
gaps_st = st.lists(st.integers(0, 0) | st.integers(1, 400_000) | st.integers(1, 7_000_000), max_size=60)


@settings(max_examples=300, deadline=None)
@given(limit=limits_st, start=st.integers(0, 10**15), gaps=gaps_st)
async def test_each_strategy_matches_its_brute_force_model(limit: Limit, start: int, gaps: list[int]) -> None:
    clock = FakeClock(start)
    log: list[int] = []
    async with RateLimiter("memory://", clock=clock) as limiter:
        for gap in gaps:
            clock.now += gap
            expected_allowed, expected_remaining = MODELS[limit.strategy](log, clock.now, limit)
            decision = await limiter.hit("k", limit)
            assert decision.allowed == expected_allowed
            assert decision.remaining == expected_remaining
            assert decision.limit == limit.capacity
            if decision.allowed:
                log.append(clock.now)
                assert decision.retry_after == 0


@settings(max_examples=300, deadline=None)
@given(limit=limits_st, start=st.integers(0, 10**15), gaps=gaps_st)
def test_retry_after_is_the_exact_wait_until_the_next_allowed_request(
    limit: Limit, start: int, gaps: list[int]
) -> None:
    step = STEPS[limit.strategy]
    state = None
    now = start
    for gap in [*gaps, 0]:
        now += gap
        new_state, _, decision = step(state, now, limit)
        if not decision.allowed:
            wait = round(decision.retry_after * 1_000_000)
            assert wait > 0
            assert step(state, now + wait, limit)[2].allowed
            assert not step(state, now + wait - 1, limit)[2].allowed
        state = new_state


@settings(max_examples=200, deadline=None)
@given(limit=limits_st, start=st.integers(0, 10**15))
def test_a_fresh_key_allows_exactly_the_advertised_quota_at_one_instant(limit: Limit, start: int) -> None:
    step = STEPS[limit.strategy]
    state = None
    allowed = 0
    for _ in range(limit.capacity + 3):
        state, _, decision = step(state, start, limit)
        allowed += decision.allowed
    # A sliding window starting mid-window has no previous count, so all strategies allow capacity.
    assert allowed == limit.capacity


@settings(max_examples=200, deadline=None)
@given(limit=limits_st, start=st.integers(0, 10**15), gaps=gaps_st)
def test_state_expiry_never_forgets_state_that_still_matters(
    limit: Limit, start: int, gaps: list[int]
) -> None:
    # The backend drops a key at its expiry; a decision right then must equal one from empty state.
    step = STEPS[limit.strategy]
    state = None
    now = start
    for gap in gaps:
        now += gap
        state, expires, _ = step(state, now, limit)
        assert expires > now
        assert step(state, expires, limit)[2] == step(None, expires, limit)[2]


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_memory_backend_sweeps_expired_keys(strategy: Strategy) -> None:
    clock = FakeClock(10**12)
    limit = Limit(1, 1, strategy=strategy)
    async with RateLimiter("memory://", clock=clock) as limiter:
        for i in range(5000):
            clock.now += 10_000_000
            await limiter.hit(f"ip{i}", limit)
        store = limiter._backend._entries  # type: ignore[attr-defined]
        assert len(store) < 4096
