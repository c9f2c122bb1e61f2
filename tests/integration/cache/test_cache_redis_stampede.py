"""Stampede protection across processes: 4 processes x 250 concurrent get_or_set(lock=True) on one key
run the loader exactly once (loader calls are counted in Redis, since the processes share nothing else)."""

from __future__ import annotations

import json
import subprocess
import sys

import redis

from mainspring.testing import ServiceURL

PROCESSES = 4
CALLS = 250

WORKER = """
import asyncio, json, sys
import redis.asyncio as aioredis
from mainspring.cache import RedisCache
from mainspring.testing import capture_logs

async def main(url: str, processes: int, calls: int) -> None:
    raw = aioredis.from_url(url)
    async def loader() -> dict[str, int]:
        await raw.incr("stampede:loader-calls")
        await asyncio.sleep(0.3)  # long enough for every process to miss and contend for the lease
        return {"answer": 42}
    with capture_logs():
        async with RedisCache(url, timeout=2.0) as cache:
            # A barrier in Redis: every process is up before anyone reads the key.
            await raw.incr("stampede:ready")
            while int(await raw.get("stampede:ready")) < processes:
                await asyncio.sleep(0.005)
            results = await asyncio.gather(
                *(cache.get_or_set("hot", loader, ttl=60, lock=True, lock_wait=10) for _ in range(calls))
            )
            stats = cache.stats()
    await raw.aclose()
    good = sum(r == {"answer": 42} for r in results)
    print("RESULT " + json.dumps({"good": good, "loads": stats.loads, "errors": stats.errors}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def test_four_processes_of_250_concurrent_callers_run_the_loader_once(redis_url: ServiceURL) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(redis_url), str(PROCESSES), str(CALLS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-2000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        reports.append(json.loads(line.removeprefix("RESULT ")))
    admin = redis.Redis.from_url(redis_url)
    loader_calls = int(admin.get("stampede:loader-calls") or 0)
    admin.close()
    assert loader_calls == 1
    assert [r["good"] for r in reports] == [CALLS] * PROCESSES, "every caller got the value"
    assert sum(r["loads"] for r in reports) == 1
    assert sum(r["errors"] for r in reports) == 0
