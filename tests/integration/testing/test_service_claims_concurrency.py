"""Isolation under real concurrency: many claimants at once never share a namespace.

The service fixture in each test's signature only gates on reachability (skip, or fail when services are
required); the concurrent claims go through the same isolation code the fixtures use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack

import asyncpg
import pytest

from mainspring.errors import ServiceUnavailableError
from mainspring.testing import ServiceURL
from mainspring.testing._isolation import isolated_postgres, isolated_redis, run_sync
from mainspring.testing._services import configured_url

WORKERS = 6


def _hold_concurrently(isolate: Callable[[str], AbstractContextManager[ServiceURL]], url: str) -> list[str]:
    """Enter ``isolate(url)`` in WORKERS threads at once; each holds its namespace until all have one."""
    barrier = threading.Barrier(WORKERS, timeout=30)

    def claim(_: int) -> str:
        barrier.wait()  # start together, so the claims really race
        with isolate(url) as got:
            barrier.wait()  # hold until every worker has its namespace
            return got.namespace

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(claim, range(WORKERS)))


def test_concurrent_redis_claims_get_distinct_database_numbers(redis_url: ServiceURL) -> None:
    numbers = _hold_concurrently(isolated_redis, configured_url("redis"))
    assert len(set(numbers)) == WORKERS
    assert redis_url.namespace not in numbers


def test_redis_claims_run_out_with_a_clear_error(redis_url: ServiceURL) -> None:
    url = configured_url("redis")
    held = {redis_url.namespace}

    def claim_all(stack: ExitStack) -> None:
        for _ in range(16):  # one more than there are test databases
            held.add(stack.enter_context(isolated_redis(url, claim_wait=0.2)).namespace)

    with ExitStack() as stack:
        with pytest.raises(ServiceUnavailableError, match=r"redis test databases at redis://.* are claimed"):
            claim_all(stack)
        assert len(held) >= 2
        assert held <= {str(n) for n in range(1, 16)}


def test_concurrent_postgres_databases_are_distinct_and_all_dropped(postgres_url: ServiceURL) -> None:
    names = _hold_concurrently(isolated_postgres, configured_url("postgres"))
    assert len(set(names)) == WORKERS

    async def remaining() -> int:
        conn = await asyncpg.connect(configured_url("postgres"))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = ANY($1)", names))
        finally:
            await conn.close()

    assert run_sync(remaining) == 0
