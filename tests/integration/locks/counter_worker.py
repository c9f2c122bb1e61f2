"""One process of the multi-process lock test: increment a shared counter N times, under a lock or not.

Run as ``python counter_worker.py URL BARRIER_DIR INDEX PROCESSES INCREMENTS lock|nolock``. The counter
lives in the backend's own server (a Redis key, a PostgreSQL row) and is read, then written, in two
steps on purpose: without the lock, concurrent processes lose updates. Prints a JSON list of
``[fencing token, value read]`` pairs (tokens are 0 without the lock).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mainspring.locks import LockManager

BARRIER_TIMEOUT = 30.0


def wait_for_everyone(barrier: Path, index: int, processes: int) -> None:
    """Start together, so the processes really contend (spawning them takes a while)."""
    (barrier / f"ready-{index}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob("ready-*"))) < processes:
        if time.monotonic() > deadline:
            raise SystemExit("the other worker processes did not start in time")
        time.sleep(0.01)


async def counter_ops(url: str) -> tuple[Callable[[], Awaitable[int]], Callable[[int], Awaitable[None]], Any]:
    """Return read and write functions for the counter, and the client to close."""
    if url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.Redis.from_url(url, socket_timeout=10)

        async def read_redis() -> int:
            return int(await client.get("counter") or 0)

        async def write_redis(value: int) -> None:
            await client.set("counter", value)

        return read_redis, write_redis, client.aclose
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10, command_timeout=10)

    async def read_pg() -> int:
        return int(await conn.fetchval("SELECT value FROM counter WHERE id = 1"))

    async def write_pg(value: int) -> None:
        await conn.execute("UPDATE counter SET value = $1 WHERE id = 1", value)

    return read_pg, write_pg, conn.close


async def main(url: str, barrier: Path, index: int, processes: int, increments: int, mode: str) -> None:
    """Do the increments and print what was seen."""
    read, write, close = await counter_ops(url)
    seen: list[tuple[int, int]] = []

    async def increment() -> int:
        value = await read()
        await asyncio.sleep(0.001)  # widen the read-then-write window another process could slip into
        await write(value + 1)
        return value

    try:
        async with LockManager.from_url(url) as locks:
            wait_for_everyone(barrier, index, processes)
            for _ in range(increments):
                if mode == "lock":
                    async with locks.acquire("counter", ttl=10, wait=30) as lease:
                        seen.append((lease.token, await increment()))
                else:
                    seen.append((0, await increment()))
    finally:
        await close()
    print(json.dumps(seen))


if __name__ == "__main__":
    url_arg, barrier_arg, index_arg, processes_arg, increments_arg, mode_arg = sys.argv[1:7]
    asyncio.run(
        main(url_arg, Path(barrier_arg), int(index_arg), int(processes_arg), int(increments_arg), mode_arg)
    )
