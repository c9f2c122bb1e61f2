"""Lock faults on real servers: killed connections, a hung holder, several processes on one counter."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from mainspring.locks import Lease, LockLostError, LockManager, LockTimeoutError
from mainspring.testing import ServiceURL

WORKER = Path(__file__).with_name("counter_worker.py")
PROCESSES = 4
INCREMENTS = 100

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# --- helpers --------------------------------------------------------------------------------------


async def kill_lock_clients_redis(url: ServiceURL) -> int:
    """Kill every connection the lock manager has to this test's Redis database; return how many."""
    admin = redis.Redis.from_url(str(url), socket_timeout=5)
    try:
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c["name"] == "mainspring-locks" and c["db"] == url.namespace]
        for client_id in ids:
            await admin.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await admin.aclose()


async def terminate_advisory_lock_holders(url: ServiceURL) -> int:
    """pg_terminate_backend on every session of this test's database holding an advisory lock."""
    conn = await asyncpg.connect(str(url), timeout=5)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        for row in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", row["pid"])
        return len(pids)
    finally:
        await conn.close()


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- killed connections ---------------------------------------------------------------------------


async def test_redis_lock_survives_killed_connections(redis_url: ServiceURL) -> None:
    async with LockManager.from_url(redis_url) as locks:
        lease = await locks.acquire("order:42", ttl=0.6, auto_extend=True)
        assert await kill_lock_clients_redis(redis_url) >= 1
        # The lock lives in Redis, not in the connection: the client reconnects, auto-extend goes on.
        await asyncio.sleep(1.0)
        assert lease.held, lease.lost_reason
        with pytest.raises(LockTimeoutError):
            await locks.acquire("order:42", ttl=5)
        assert await kill_lock_clients_redis(redis_url) >= 1
        assert await lease.release() is True
        async with locks.acquire("order:42", ttl=5, wait=0):
            pass


async def test_postgres_lock_is_lost_with_its_terminated_connection(
    postgres_url: ServiceURL, captured_logs: list[dict[str, Any]]
) -> None:
    async with LockManager.from_url(postgres_url) as locks:
        leases: list[Lease] = []

        async def lose_the_connection_while_holding() -> None:
            async with locks.acquire("order:42", ttl=30) as lease:
                leases.append(lease)
                assert await terminate_advisory_lock_holders(postgres_url) == 1
                await wait_until(lambda: lease.lost)
                # The session ended, so did its lock: someone else gets it at once.
                async with locks.acquire("order:42", ttl=5, wait=2) as successor:
                    assert successor.token > lease.token

        with pytest.raises(LockLostError, match="connection was closed"):
            await lose_the_connection_while_holding()
        assert leases[0].released
        # The pool replaced the dead connection; the manager keeps working without a restart.
        async with locks.acquire("order:42", ttl=5, wait=0):
            pass
    assert any(e["event"] == "lock was lost before release" for e in captured_logs)


async def test_postgres_auto_extend_reports_a_terminated_connection(
    postgres_url: ServiceURL, captured_logs: list[dict[str, Any]]
) -> None:
    async with LockManager.from_url(postgres_url) as locks:
        lease = await locks.acquire("order:42", ttl=0.3, auto_extend=True)
        await terminate_advisory_lock_holders(postgres_url)
        await wait_until(lambda: any(e["event"] == "lock lost while held" for e in captured_logs))
        assert lease.lost
        assert "connection was closed" in (lease.lost_reason or "")
        assert await lease.release() is False


async def test_redis_auto_extend_reports_a_lock_taken_over(
    redis_url: ServiceURL, captured_logs: list[dict[str, Any]]
) -> None:
    async with LockManager.from_url(redis_url) as locks:
        lease = await locks.acquire("order:42", ttl=0.3, auto_extend=True)
        admin = redis.Redis.from_url(str(redis_url))
        try:
            # Somebody else's value in the key, as after an expiry and a takeover.
            await admin.set("mainspring:lock:{order:42}", "intruder:999", px=5000)
            await wait_until(lambda: lease.lost)
            assert "auto-extend" in (lease.lost_reason or "")
            assert await lease.release() is False
            assert await admin.get("mainspring:lock:{order:42}") == b"intruder:999", "left alone"
        finally:
            await admin.aclose()
    lost = [e for e in captured_logs if e["event"] == "lock lost while held"]
    assert lost
    assert lost[0]["level"] == "error"
    assert lost[0]["lock"] == "order:42"


# --- a holder whose event loop hangs --------------------------------------------------------------


@pytest.mark.parametrize("service", ["redis", "postgres"])
async def test_hung_holder_loses_the_lock_shortly_after_its_ttl(
    service: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(f"{service}_url"))
    acquired = threading.Event()
    outcome: dict[str, Any] = {}

    async def hold_and_hang() -> None:
        async with LockManager.from_url(url) as locks:
            lease = await locks.acquire("job", ttl=0.5)
            acquired.set()
            # A blocked event loop: no task of this manager runs, nothing releases or extends.
            time.sleep(2.0)  # noqa: ASYNC251 - blocking is the point of this test
            outcome["released"] = await lease.release()

    holder = threading.Thread(target=lambda: asyncio.run(hold_and_hang()), name="hung-holder")
    holder.start()
    try:
        assert await asyncio.to_thread(acquired.wait, 10)
        async with LockManager.from_url(url) as locks, locks.acquire("job", ttl=5, wait=5):
            # Taken while the old holder is still frozen: the server let its lock go.
            assert holder.is_alive()
            assert "released" not in outcome
    finally:
        await asyncio.to_thread(holder.join, 10)
    assert outcome["released"] is False


# --- several processes, one counter ---------------------------------------------------------------


def run_workers(url: str, barrier: Path, mode: str) -> list[tuple[int, int]]:
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, str(barrier), str(i), str(PROCESSES), str(INCREMENTS), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    seen: list[tuple[int, int]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        seen.extend((token, value) for token, value in json.loads(out.strip().splitlines()[-1]))
    return seen


async def redis_counter(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(await client.get("counter") or 0)
    finally:
        await client.aclose()


async def postgres_counter(url: str, *, create: bool = False) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        if create:
            await conn.execute("CREATE TABLE counter (id int PRIMARY KEY, value int NOT NULL)")
            await conn.execute("INSERT INTO counter VALUES (1, 0)")
        return int(await conn.fetchval("SELECT value FROM counter WHERE id = 1"))
    finally:
        await conn.close()


@pytest.mark.parametrize("service", ["redis", "postgres"])
async def test_four_processes_incrementing_under_one_lock_count_exactly(
    service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(request.getfixturevalue(f"{service}_url"))
    read = redis_counter if service == "redis" else postgres_counter
    if service == "postgres":
        await postgres_counter(url, create=True)

    seen = await asyncio.to_thread(run_workers, url, tmp_path / "locked", "lock")

    assert await read(url) == PROCESSES * INCREMENTS
    # Ordered by fencing token, the values read are 0, 1, 2, ...: the tokens follow the lock's order.
    assert [value for _token, value in sorted(seen)] == list(range(PROCESSES * INCREMENTS))


@pytest.mark.parametrize("service", ["redis", "postgres"])
async def test_four_processes_without_the_lock_lose_updates(
    service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The control experiment: the same workers without the lock do lose increments, so the test
    # above would catch a lock that does not exclude.
    url = str(request.getfixturevalue(f"{service}_url"))
    read = redis_counter if service == "redis" else postgres_counter
    if service == "postgres":
        await postgres_counter(url, create=True)

    await asyncio.to_thread(run_workers, url, tmp_path / "unlocked", "nolock")

    assert await read(url) < PROCESSES * INCREMENTS
