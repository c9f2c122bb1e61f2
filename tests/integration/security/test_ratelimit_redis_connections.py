"""The Redis rate limiter's own connection handling: killed, cancelled and bounded connections."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from mainspring.security import Limit, RateLimiter, Strategy
from mainspring.testing import ServiceURL

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin(redis_url: ServiceURL) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(str(redis_url), decode_responses=True)
    yield client
    await client.aclose()


def _named(redis_url: ServiceURL) -> tuple[str, str]:
    """A client name for the limiter's connections (so CLIENT LIST finds them) and the URL carrying it."""
    name = f"rl-{uuid.uuid4().hex[:12]}"
    return name, f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}"


async def _ids(admin: Any, name: str) -> list[str]:
    return [c["id"] for c in await admin.client_list() if c["name"] == name]


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_killed_connections_are_replaced_without_a_degraded_decision(
    redis_url: ServiceURL, admin: Any, strategy: Strategy
) -> None:
    name, url = _named(redis_url)
    limit = Limit(100, 3600, strategy=strategy)
    async with RateLimiter(url, timeout=5, max_connections=4) as limiter:
        await asyncio.gather(*(limiter.hit("k", limit) for _ in range(4)))
        ids = await _ids(admin, name)
        assert ids
        for client_id in ids:
            await admin.client_kill_filter(_id=client_id)
        after = [await limiter.hit("k", limit) for _ in range(3)]
    assert [d.remaining for d in after] == [95, 94, 93]
    assert not any(d.degraded for d in after)
    assert limiter.stats.backend_errors == 0


async def test_cancelled_decisions_never_leave_a_reply_for_the_next_caller(redis_url: ServiceURL) -> None:
    noise = Limit(1000, 3600, strategy=Strategy.FIXED_WINDOW)
    limit = Limit(100, 3600, strategy=Strategy.FIXED_WINDOW)
    async with RateLimiter(redis_url, timeout=5, max_connections=3) as limiter:
        for _ in range(5):
            tasks = [asyncio.create_task(limiter.hit(f"noise-{i}", noise)) for i in range(12)]
            await asyncio.sleep(0)  # every task sent its command or waits for a connection
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)
        decisions = [await limiter.hit("k", limit) for _ in range(5)]
    # A reply left over from a cancelled "noise" call would show its quota (1000), not this key's.
    assert [(d.limit, d.remaining) for d in decisions] == [
        (100, 99),
        (100, 98),
        (100, 97),
        (100, 96),
        (100, 95),
    ]
    assert limiter.stats.backend_errors == 0


async def test_concurrent_callers_share_at_most_max_connections_and_stop_closes_them(
    redis_url: ServiceURL, admin: Any
) -> None:
    name, url = _named(redis_url)
    limit = Limit(1000, 3600, strategy=Strategy.GCRA)
    async with RateLimiter(url, timeout=10, max_connections=3) as limiter:
        decisions = await asyncio.gather(*(limiter.hit(f"k{i % 7}", limit) for i in range(90)))
        open_while_running = len(await _ids(admin, name))
    assert all(d.allowed and not d.degraded for d in decisions)
    assert 1 <= open_while_running <= 3
    # The server notices closed sockets on its own schedule: poll (bounded) rather than sleep and hope.
    for _ in range(200):
        if not await _ids(admin, name):
            break
        await asyncio.sleep(0.01)
    assert await _ids(admin, name) == []
