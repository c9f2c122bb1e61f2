"""Coherence of MultiLevelCache across two processes over a real Redis, measured.

The test process writes; a second process (this file run as a script) reads the same key in a loop
through its own L1 and records when it first sees each value. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from mainspring.cache import MemoryCache, MultiLevelCache, RedisCache
from mainspring.cache._coherence import RedisInvalidation
from mainspring.testing import ServiceURL

WRITES = 1_000
P99_BOUND = 0.050  # seconds, from the issue
NAMESPACE = "coherence"


def make(url: str, *, l1_max_ttl: float = 60.0, channel: bool = True) -> MultiLevelCache:
    """A multi-level cache on ``url``: L1 memory, L2 Redis, the channel (unless told otherwise)."""
    return MultiLevelCache(
        MemoryCache(),
        RedisCache(url, namespace=NAMESPACE, timeout=2.0),
        l1_max_ttl=l1_max_ttl,
        invalidation=RedisInvalidation(url, namespace=NAMESPACE) if channel else None,
    )


async def reader(url: str, last: int) -> None:
    """Child process: prime L1, say ready, then poll the key until ``last`` is seen; print the times."""
    async with make(url) as cache:
        while await cache.l1.get("x", None) is None:  # until the value sits in L1
            await cache.get("x")
            await asyncio.sleep(0.001)
        print("ready", flush=True)
        seen: dict[int, float] = {}
        newest = -1
        deadline = time.monotonic() + 30
        while newest < last and time.monotonic() < deadline:
            value = await cache.get("x")
            now = time.monotonic()
            for index in range(newest + 1, value + 1):  # a skipped value counts as seen now (later)
                seen[index] = now
            newest = max(newest, value)
            await asyncio.sleep(0.0002)  # lets the subscriber run; a real app awaits I/O anyway
        levels = cache.level_stats()
        print(
            json.dumps({"seen": seen, "l1_hits": levels["l1"].hits, "l2_reads": levels["l2"].hits}),
            flush=True,
        )


@pytest.mark.slow
async def test_a_thousand_writes_in_one_process_are_seen_by_another_within_50_ms_at_p99(
    redis_url: ServiceURL,
) -> None:
    url = str(redis_url)
    async with make(url) as writer:
        await writer.set("x", -1)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__)), url, str(WRITES - 1), stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        try:
            assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
            written: list[float] = []
            for index in range(WRITES):
                written.append(time.monotonic())  # before the write: its own cost counts too
                await writer.set("x", index)
                await asyncio.sleep(0.002)
            report = json.loads(await asyncio.wait_for(child.stdout.readline(), 40))
        finally:
            if child.returncode is None:
                await asyncio.wait_for(child.wait(), 10)
    seen = {int(k): v for k, v in report["seen"].items()}
    assert len(seen) == WRITES, f"the reader saw {len(seen)} of {WRITES} writes"
    lags = sorted(seen[i] - written[i] for i in range(WRITES))
    p50, p99 = statistics.median(lags), lags[int(0.99 * WRITES) - 1]
    print(
        f"\ncoherence over {WRITES} writes: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
        f"max {lags[-1] * 1000:.2f} ms; reader L1 hits {report['l1_hits']}, L2 reads {report['l2_reads']}"
    )
    assert report["l1_hits"] > WRITES // 2, "the reader must have served from L1, or coherence was not tested"
    assert p99 < P99_BOUND


async def test_without_the_channel_a_stale_value_lasts_no_longer_than_the_l1_bound(
    redis_url: ServiceURL,
) -> None:
    url = str(redis_url)
    async with make(url) as writer, make(url, l1_max_ttl=0.3, channel=False) as blind:
        await writer.set("x", 1)
        assert await blind.get("x") == 1
        await writer.set("x", 2)
        changed = time.monotonic()
        assert await blind.get("x") == 1, "it hears nothing: its L1 copy stands"
        while await blind.get("x") != 2:
            assert time.monotonic() - changed < 0.3 + 0.1, "stale past the L1 bound"
            await asyncio.sleep(0.005)


async def stampede(url: str, callers: int) -> None:
    """Child process: ``callers`` concurrent ``get_or_set(lock=True)`` misses; the loader counts in Redis."""
    async with make(url) as cache, redis.asyncio.Redis.from_url(url) as raw:
        print("ready", flush=True)
        await asyncio.wait_for(_line(), 30)  # "go": every process starts at once

        async def loader() -> str:
            await raw.incr("loader-calls")
            await asyncio.sleep(0.3)
            return "loaded"

        results = await asyncio.gather(
            *(cache.get_or_set("hot", loader, ttl=60, lock=True, lock_wait=10) for _ in range(callers))
        )
        print(json.dumps(sorted(set(results))), flush=True)


async def _line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def test_four_processes_with_lock_true_run_the_loader_once(redis_url: ServiceURL) -> None:
    url = str(redis_url)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__)),
            "stampede",
            url,
            "250",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [json.loads(await asyncio.wait_for(c.stdout.readline(), 30)) for c in children if c.stdout]
    finally:
        for child in children:
            if child.returncode is None:
                await asyncio.wait_for(child.wait(), 10)
    assert outputs == [["loaded"]] * 4
    with redis.Redis.from_url(url) as raw:
        assert int(raw.get("loader-calls") or 0) == 1


if __name__ == "__main__":
    if sys.argv[1] == "stampede":
        asyncio.run(stampede(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(reader(sys.argv[1], int(sys.argv[2])))
