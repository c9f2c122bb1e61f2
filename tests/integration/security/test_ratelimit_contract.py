"""The rate-limiter contract, run against every backend (memory and a real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mainspring.errors import RateLimitedError
from mainspring.security import Limit, RateLimiter, RateLimitKey, Strategy, rate_limit_headers

pytestmark = pytest.mark.integration

STRATEGIES = list(Strategy)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    url = "memory://" if request.param == "memory" else str(request.getfixturevalue("redis_url"))
    async with RateLimiter(url, timeout=2.0) as limiter:
        yield limiter


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_key_gets_exactly_its_quota_then_is_denied_with_retry_after(
    limiter: RateLimiter, strategy: Strategy
) -> None:
    limit = Limit(5, 3600, strategy=strategy)
    decisions = [await limiter.hit("user:1", limit) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    denied = decisions[-1]
    assert denied.remaining == 0
    # A full sliding window only opens once it is the previous window and has partly faded: up to 2 x per.
    assert 0 < denied.retry_after <= (2 if strategy is Strategy.SLIDING_WINDOW else 1) * 3600
    assert denied.reset_after > 0
    assert not denied.degraded
    assert limiter.stats.allowed == 5
    assert limiter.stats.denied == 2


async def test_gcra_burst_sets_the_quota_at_one_instant(limiter: RateLimiter) -> None:
    limit = Limit(1, 3600, burst=3, strategy=Strategy.GCRA)
    decisions = [await limiter.hit("k", limit) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].limit == 3
    # One token comes back per emission interval (an hour here).
    assert 3590 < decisions[-1].retry_after <= 3600


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_keys_and_strategies_have_separate_budgets(limiter: RateLimiter, strategy: Strategy) -> None:
    limit = Limit(1, 3600, strategy=strategy)
    assert (await limiter.hit(RateLimitKey.ip("192.0.2.1"), limit)).allowed
    assert not (await limiter.hit(RateLimitKey.ip("192.0.2.1"), limit)).allowed
    assert (await limiter.hit(RateLimitKey.ip("192.0.2.2"), limit)).allowed
    other = Strategy.GCRA if strategy is not Strategy.GCRA else Strategy.FIXED_WINDOW
    assert (await limiter.hit(RateLimitKey.ip("192.0.2.1"), Limit(1, 3600, strategy=other))).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_reset_restores_the_full_quota(limiter: RateLimiter, strategy: Strategy) -> None:
    limit = Limit(1, 3600, strategy=strategy)
    await limiter.hit("login:alice", limit)
    assert not (await limiter.hit("login:alice", limit)).allowed
    await limiter.reset("login:alice", limit)
    assert (await limiter.hit("login:alice", limit)).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_concurrent_attempts_never_exceed_the_quota(limiter: RateLimiter, strategy: Strategy) -> None:
    limit = Limit(50, 3600, strategy=strategy)
    decisions = await asyncio.gather(*(limiter.hit("hot", limit) for _ in range(300)))
    assert sum(d.allowed for d in decisions) == 50


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_denied_key_is_allowed_again_after_retry_after(
    limiter: RateLimiter, strategy: Strategy
) -> None:
    limit = Limit(2, 0.3, strategy=strategy)
    while (decision := await limiter.hit("short", limit)).allowed:
        pass
    await asyncio.sleep(decision.retry_after + 0.05)
    assert (await limiter.hit("short", limit)).allowed


async def test_check_raises_rate_limited_error_and_headers_show_the_denial(limiter: RateLimiter) -> None:
    limit = Limit.parse("2/minute", strategy=Strategy.FIXED_WINDOW)
    first = await limiter.check("api", limit)
    assert rate_limit_headers(first)["RateLimit-Remaining"] == "1"
    await limiter.check("api", limit)
    with pytest.raises(RateLimitedError) as info:
        await limiter.check("api", limit)
    assert 0 < info.value.retry_after <= 60
    denied = await limiter.hit("api", limit)
    headers = rate_limit_headers(denied)
    assert headers["RateLimit-Limit"] == "2"
    assert headers["RateLimit-Policy"] == "2;w=60"
    assert 1 <= int(headers["Retry-After"]) <= 60
