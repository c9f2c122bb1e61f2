"""The lock contract, run against every backend: memory, Redis and PostgreSQL (real servers)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from mainspring.errors import ConflictError
from mainspring.locks import Lease, LockLostError, LockManager, LockTimeoutError


async def test_acquire_gives_a_held_lease_that_release_frees(locks: LockManager) -> None:
    async with locks.acquire("order:42", ttl=5) as lease:
        assert isinstance(lease, Lease)
        assert lease.name == "order:42"
        assert lease.held
        assert not lease.lost
        assert lease.lost_reason is None
        assert 0 < lease.expires_in <= 5
        assert lease.token >= 1
    assert lease.released
    assert not lease.held
    # Free again: taking it without waiting works.
    async with locks.acquire("order:42", ttl=5) as again:
        assert again.token > lease.token


async def test_awaited_acquire_returns_a_lease_released_by_hand(locks: LockManager) -> None:
    lease = await locks.acquire("report", ttl=5)
    assert lease.held
    assert await lease.release() is True
    assert await lease.release() is False, "a second release reports that nothing was released"
    async with locks.acquire("report", ttl=5, wait=0):
        pass


async def test_held_lock_without_wait_raises_lock_timeout_error(locks: LockManager) -> None:
    async with locks.acquire("order:42", ttl=5):
        with pytest.raises(LockTimeoutError) as caught:
            await locks.acquire("order:42", ttl=5)
    error = caught.value
    assert isinstance(error, ConflictError)
    assert error.code == "lock_timeout"
    assert error.http_status == 409
    assert error.details == {"lock": "order:42", "wait": 0.0}
    assert "'order:42'" in error.message
    assert "wait=" in error.message


async def test_wait_that_runs_out_raises_lock_timeout_error_after_waiting(locks: LockManager) -> None:
    async with locks.acquire("order:42", ttl=5):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=r"not released within 0\.3 s"):
            await locks.acquire("order:42", ttl=5, wait=0.3)
        assert time.monotonic() - started >= 0.28


async def test_waiter_gets_the_lock_when_the_holder_releases(locks: LockManager) -> None:
    holder = await locks.acquire("order:42", ttl=5)

    async def release_soon() -> None:
        await asyncio.sleep(0.2)
        await holder.release()

    releaser = asyncio.create_task(release_soon())
    async with locks.acquire("order:42", ttl=5, wait=5) as waiter:
        assert holder.released
        assert waiter.token > holder.token
    await releaser


async def test_different_names_do_not_exclude_each_other(locks: LockManager) -> None:
    async with locks.acquire("order:1", ttl=5) as first, locks.acquire("order:2", ttl=5) as second:
        assert first.held
        assert second.held


async def test_many_concurrent_tasks_never_hold_the_lock_together(locks: LockManager) -> None:
    tasks, rounds = 8, 10
    counter = 0
    inside = 0
    most_inside = 0
    tokens: list[int] = []

    async def worker() -> None:
        nonlocal counter, inside, most_inside
        for _ in range(rounds):
            async with locks.acquire("counter", ttl=10, wait=20) as lease:
                inside += 1
                most_inside = max(most_inside, inside)
                value = counter
                await asyncio.sleep(0)  # let the other tasks run: without the lock, updates get lost
                counter = value + 1
                tokens.append(lease.token)
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    assert most_inside == 1
    assert counter == tasks * rounds
    assert all(a < b for a, b in itertools.pairwise(tokens)), "tokens strictly increase"


async def test_fencing_tokens_strictly_increase_per_name(locks: LockManager) -> None:
    seen: list[int] = []
    for _ in range(5):
        async with locks.acquire("invoice:7", ttl=5) as lease:
            seen.append(lease.token)
    # An expired lease taken over still hands the next holder a larger token.
    stale = await locks.acquire("invoice:7", ttl=0.2)
    await asyncio.sleep(0.3)
    async with locks.acquire("invoice:7", ttl=5, wait=2) as successor:
        seen.extend([stale.token, successor.token])
    await stale.release()
    assert all(a < b for a, b in itertools.pairwise(seen)), seen


async def test_expired_lock_taken_by_another_holder_is_not_released_by_the_old_one(
    locks: LockManager,
) -> None:
    old = await locks.acquire("order:42", ttl=0.3)
    await asyncio.sleep(0.45)
    assert old.lost
    assert "ttl" in (old.lost_reason or "")
    new = await locks.acquire("order:42", ttl=5, wait=2)

    assert await old.release() is False
    # The new holder still has it: nobody else can take it.
    with pytest.raises(LockTimeoutError):
        await locks.acquire("order:42", ttl=5)
    assert new.held
    assert await new.release() is True


async def test_block_that_outlived_its_lock_raises_lock_lost_error_on_exit(locks: LockManager) -> None:
    async def outlive_the_lock() -> None:
        async with locks.acquire("order:42", ttl=0.2) as lease:
            await asyncio.sleep(0.35)
            assert not lease.held
            with pytest.raises(LockLostError):
                lease.ensure_held()

    with pytest.raises(LockLostError) as caught:
        await outlive_the_lock()
    assert caught.value.code == "lock_lost"
    assert isinstance(caught.value, ConflictError)
    assert "fencing token" in caught.value.message


async def test_exception_in_block_propagates_and_releases_the_lock(locks: LockManager) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with locks.acquire("order:42", ttl=5):
            raise Boom
    async with locks.acquire("order:42", ttl=5, wait=0):
        pass


async def test_extend_keeps_the_lock_past_its_first_ttl(locks: LockManager) -> None:
    async with locks.acquire("order:42", ttl=0.6) as lease:
        await asyncio.sleep(0.2)
        await lease.extend(1.5)
        assert lease.ttl == 1.5
        await asyncio.sleep(0.6)  # past the first ttl
        assert lease.held
        with pytest.raises(LockTimeoutError):
            await locks.acquire("order:42", ttl=5)


async def test_extend_of_a_lost_lock_raises_and_leaves_the_new_holder_alone(locks: LockManager) -> None:
    old = await locks.acquire("order:42", ttl=0.2)
    await asyncio.sleep(0.35)
    new = await locks.acquire("order:42", ttl=5, wait=2)
    with pytest.raises(LockLostError):
        await old.extend(5)
    assert not old.held
    assert await old.release() is False
    assert await new.release() is True


async def test_auto_extend_keeps_the_lock_alive_past_its_ttl(locks: LockManager) -> None:
    async with locks.acquire("order:42", ttl=0.45, auto_extend=True) as lease:
        await asyncio.sleep(1.0)  # more than two ttls
        assert lease.held, lease.lost_reason
        with pytest.raises(LockTimeoutError):
            await locks.acquire("order:42", ttl=5)
    assert lease.released
    # The extend task is gone with the release: the lock is free and stays free.
    async with locks.acquire("order:42", ttl=5):
        pass


async def test_auto_extend_task_is_named_and_stopped_on_release(locks: LockManager) -> None:
    lease = await locks.acquire("order:42", ttl=5, auto_extend=True)
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "mainspring.locks:extend:order:42" in names
    await lease.release()
    names = {task.get_name() for task in asyncio.all_tasks() if not task.done()}
    assert "mainspring.locks:extend:order:42" not in names


async def test_cancelled_waiter_leaves_no_lock_behind(locks: LockManager) -> None:
    holder = await locks.acquire("order:42", ttl=5)
    waiter = asyncio.create_task(locks.acquire("order:42", ttl=5, wait=5).__aenter__())
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await holder.release()
    # A cancelled PostgreSQL waiter's session is closed; the server frees what that session was
    # queued for once it notices, a moment later (longer on a busy machine): wait for that moment.
    async with locks.acquire("order:42", ttl=5, wait=2):
        pass


async def test_stop_releases_the_leases_still_held(lock_url: str) -> None:
    manager = LockManager.from_url(lock_url)
    await manager.start()
    lease = await manager.acquire("order:42", ttl=30)
    await manager.stop()
    assert lease.released
    if lock_url == "memory://":
        return  # the store went with the manager
    async with LockManager.from_url(lock_url) as other, other.acquire("order:42", ttl=5, wait=0):
        pass
