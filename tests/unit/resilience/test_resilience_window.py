"""The sliding windows, and the breaker on them, agree with brute force over the outcomes (property tests)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from mainspring.resilience import CircuitBreaker, CircuitState
from mainspring.resilience._window import CountWindow, TimeWindow

outcomes = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=300)
# (seconds since the previous outcome, failed, slow); time only moves forward.
timed_outcomes = st.lists(
    st.tuples(st.floats(min_value=0, max_value=5, allow_nan=False), st.booleans(), st.booleans()),
    max_size=200,
)


@given(size=st.integers(min_value=1, max_value=50), recorded=outcomes)
def test_count_window_totals_equal_brute_force_over_last_n(
    size: int, recorded: list[tuple[bool, bool]]
) -> None:
    window = CountWindow(size)
    for i, (failed, slow) in enumerate(recorded):
        window.record(0.0, failed=failed, slow=slow)
        last = recorded[max(0, i + 1 - size) : i + 1]
        totals = window.totals(0.0)
        assert totals.calls == len(last)
        assert totals.failures == sum(f for f, _ in last)
        assert totals.slow == sum(s for _, s in last)
        assert totals.failure_rate == sum(f for f, _ in last) / len(last)


@given(
    size=st.integers(min_value=1, max_value=20),
    recorded=timed_outcomes,
    later=st.floats(min_value=0, max_value=30, allow_nan=False),
)
def test_time_window_totals_equal_brute_force_over_last_seconds(
    size: int, recorded: list[tuple[float, bool, bool]], later: float
) -> None:
    window = TimeWindow(size)
    now = 1000.0
    history: list[tuple[float, bool, bool]] = []

    def expected(at: float) -> tuple[int, int, int]:
        kept = [(f, s) for t, f, s in history if math.floor(t) >= math.floor(at) - size + 1]
        return len(kept), sum(f for f, _ in kept), sum(s for _, s in kept)

    for gap, failed, slow in recorded:
        now += gap
        window.record(now, failed=failed, slow=slow)
        history.append((now, failed, slow))
        totals = window.totals(now)
        assert (totals.calls, totals.failures, totals.slow) == expected(now)
    now += later
    totals = window.totals(now)
    assert (totals.calls, totals.failures, totals.slow) == expected(now)


@given(recorded=outcomes)
def test_cleared_window_is_empty(recorded: list[tuple[bool, bool]]) -> None:
    count, timed = CountWindow(10), TimeWindow(10)
    for failed, slow in recorded:
        count.record(5.0, failed=failed, slow=slow)
        timed.record(5.0, failed=failed, slow=slow)
    count.clear()
    timed.clear()
    assert count.totals(5.0).calls == timed.totals(5.0).calls == 0
    assert count.totals(5.0).failure_rate == timed.totals(5.0).slow_call_rate == 0.0


@given(
    size=st.integers(min_value=1, max_value=20),
    minimum=st.integers(min_value=1, max_value=20),
    threshold=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
    recorded=st.lists(st.booleans(), max_size=100),
)
def test_breaker_opens_at_the_first_call_where_brute_force_rate_reaches_threshold(
    size: int, minimum: int, threshold: float, recorded: list[bool]
) -> None:
    minimum = min(minimum, size)
    breaker = CircuitBreaker(
        "prop", window_size=size, minimum_calls=minimum, failure_rate_threshold=threshold, clock=lambda: 0.0
    )
    expected_open_at = next(
        (
            i
            for i in range(len(recorded))
            if len(last := recorded[max(0, i + 1 - size) : i + 1]) >= minimum
            and sum(last) / len(last) >= threshold
        ),
        None,
    )
    opened_at = None
    for i, failed in enumerate(recorded):
        permit = breaker.acquire()
        if failed:
            permit.record_failure()
        else:
            permit.record_success()
        if breaker.state is CircuitState.OPEN:
            opened_at = i
            break
    assert opened_at == expected_open_at
