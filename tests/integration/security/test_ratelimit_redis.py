"""The Redis rate limiter across real processes, with a dead or silent server, and its script protocol."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from mainspring.errors import RateLimitedError
from mainspring.security import Limit, RateLimiter, Strategy
from mainspring.testing import ServiceURL

pytestmark = pytest.mark.integration

WORKER = """
import asyncio, sys
from mainspring.security import Limit, RateLimiter, Strategy

async def main(url: str, strategy: str) -> None:
    # A week-long window: the test can't straddle a window boundary and see two quotas.
    limit = Limit(100, 7 * 86400, strategy=Strategy(strategy))
    async with RateLimiter(url, timeout=20, max_connections=200) as limiter:
        await limiter.hit("warm-up", limit)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        decisions = await asyncio.gather(*(limiter.hit("shared", limit) for _ in range(200)))
    print(sum(d.allowed for d in decisions), sum(d.degraded for d in decisions), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(Strategy))
def test_four_processes_of_200_concurrent_attempts_get_exactly_100_allowed(
    redis_url: ServiceURL, strategy: Strategy
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(redis_url), strategy.value],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        # All four are connected and waiting: release them together so their attempts interleave.
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    counts = [tuple(int(x) for x in out.split()) for out, _ in results]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    assert sum(allowed for allowed, _ in counts) == 100
    assert all(degraded == 0 for _, degraded in counts)


DEAD = "redis://127.0.0.1:1/0"


async def test_an_unreachable_redis_fails_open_by_default_within_the_timeout(
    captured_logs: list[dict[str, Any]],
) -> None:
    async with RateLimiter(DEAD, timeout=0.5) as limiter:
        started = time.monotonic()
        decisions = [await limiter.hit("k", Limit(1, 60)) for _ in range(3)]
        elapsed = time.monotonic() - started
    assert all(d.allowed and d.degraded for d in decisions)
    assert elapsed < 3 * 0.5 + 1
    assert (limiter.stats.backend_errors, limiter.stats.failed_open, limiter.stats.failed_closed) == (3, 3, 0)
    warnings = [e for e in captured_logs if e["event"] == "rate_limit_backend_failed"]
    assert len(warnings) == 1, "an outage is logged once, not once per request"
    assert warnings[0]["policy"] == "fail_open"


async def test_an_auth_limit_fails_closed_and_check_raises_429() -> None:
    login = Limit(5, 60, auth=True)
    async with RateLimiter(DEAD, timeout=0.5) as limiter:
        decision = await limiter.hit("login:alice", login)
        with pytest.raises(RateLimitedError) as info:
            await limiter.check("login:alice", login)
    assert not decision.allowed
    assert decision.degraded
    assert decision.retry_after >= 1
    assert info.value.details["degraded"] is True
    assert "unavailable" in info.value.message
    assert limiter.stats.failed_closed == 2


@pytest.mark.parametrize(
    ("limiter_default", "limit", "allowed"),
    [
        (True, Limit(5, 60, fail_open=False), False),
        (True, Limit(5, 60, auth=True, fail_open=True), True),
        (False, Limit(5, 60), False),
        (False, Limit(5, 60, fail_open=True), True),
    ],
)
async def test_the_limit_policy_overrides_the_limiter_default(
    limiter_default: bool, limit: Limit, allowed: bool
) -> None:
    async with RateLimiter(DEAD, timeout=0.5, fail_open=limiter_default) as limiter:
        decision = await limiter.hit("k", limit)
    assert decision.allowed is allowed
    assert decision.degraded


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: Redis hung."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_hung_redis_never_hangs_the_caller(silent_server: int) -> None:
    async with RateLimiter(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3) as limiter:
        started = time.monotonic()
        open_decision = await limiter.hit("k", Limit(1, 60))
        closed_decision = await limiter.hit("k", Limit(1, 60, auth=True))
        elapsed = time.monotonic() - started
    assert open_decision.allowed
    assert open_decision.degraded
    assert not closed_decision.allowed
    assert closed_decision.degraded
    assert elapsed < 2 * 0.3 + 1


async def test_a_healthy_redis_decides_without_degrading_or_logging_failures(
    redis_url: ServiceURL, captured_logs: list[dict[str, Any]]
) -> None:
    async with RateLimiter(redis_url, timeout=1) as limiter:
        first = await limiter.hit("k", Limit(1, 60))
        second = await limiter.hit("k", Limit(1, 60))
    assert first.allowed
    assert not first.degraded
    assert not second.allowed
    assert not second.degraded
    assert limiter.stats.backend_errors == 0
    assert not any(e["event"] == "rate_limit_backend_failed" for e in captured_logs)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A redis-server of our own: these tests flush its script cache and reset its statistics."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; the script-protocol tests need their own server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _command_calls(client: Any) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_each_decision_is_one_evalsha_and_a_flushed_script_cache_is_reloaded(
    private_redis: str, strategy: Strategy
) -> None:
    admin = aioredis.Redis.from_url(private_redis)
    limit = Limit(3, 60, strategy=strategy)
    try:
        await admin.flushall()
        await admin.script_flush()
        async with RateLimiter(private_redis, timeout=2) as limiter:
            assert (await limiter.hit("a", limit)).allowed  # NOSCRIPT, then EVAL
            await admin.config_resetstat()
            decisions = [await limiter.hit("a", limit) for _ in range(10)]
            calls = await _command_calls(admin)
            await admin.script_flush()
            await limiter.reset("a", limit)
            after_flush = await limiter.hit("a", limit)
    finally:
        await admin.aclose()
    assert [d.allowed for d in decisions] == [True, True] + [False] * 8
    # Commands the scripts run count too; anything else would be a second round trip.
    inside_scripts = {"time", "get", "set", "config|resetstat"}
    assert calls.pop("evalsha") == 10
    assert set(calls) <= inside_scripts
    assert after_flush.allowed
    assert not after_flush.degraded
