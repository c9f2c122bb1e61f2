"""The session-store contract and the SessionManager on it, run against memory and a real Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mainspring.context import Principal
from mainspring.errors import AuthenticationError, ServiceUnavailableError
from mainspring.security import (
    MemorySessionStore,
    RedisSessionStore,
    SessionManager,
    SessionRecord,
    SessionStore,
)

pytestmark = pytest.mark.integration

SECRET = "s" * 32
ALICE = Principal("alice", roles=frozenset({"customer"}), auth_method="password")


class Clock:
    """A settable clock in Unix seconds, so timeouts are crossed without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    # A generous deadline: 50 connections open at once on a loaded 2-core CI machine.
    url = str(request.getfixturevalue("redis_url"))
    async with RedisSessionStore(url, key_prefix="t:s:", timeout=5.0) as redis:
        yield redis


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(store: SessionStore, clock: Clock) -> SessionManager:
    return SessionManager(store, secret=SECRET, idle_timeout=600, absolute_timeout=3600, clock=clock)


# -- the store contract -------------------------------------------------------------------------------


async def test_put_then_get_returns_the_record(store: SessionStore) -> None:
    await store.put("k1", SessionRecord(b'{"a":1}', 12.5), 60)
    assert await store.get("k1") == SessionRecord(b'{"a":1}', 12.5)
    assert await store.get("missing") is None


async def test_put_replaces_an_existing_record(store: SessionStore) -> None:
    await store.put("k1", SessionRecord(b"one", 1.0), 60)
    await store.put("k1", SessionRecord(b"two", 2.0), 60)
    assert await store.get("k1") == SessionRecord(b"two", 2.0)


async def test_touch_updates_last_seen_but_not_the_payload(store: SessionStore) -> None:
    await store.put("k1", SessionRecord(b"payload", 1.0), 60)
    assert await store.touch("k1", 99.0, 60)
    assert await store.get("k1") == SessionRecord(b"payload", 99.0)


async def test_touch_of_a_deleted_record_does_not_resurrect_it(store: SessionStore) -> None:
    await store.put("k1", SessionRecord(b"payload", 1.0), 60)
    assert await store.delete("k1")
    assert not await store.touch("k1", 5.0, 60)
    assert await store.get("k1") is None


async def test_replace_moves_the_record_and_drops_the_old_key(store: SessionStore) -> None:
    await store.put("old", SessionRecord(b"v1", 1.0), 60)
    assert await store.replace("old", "new", SessionRecord(b"v2", 2.0), 60)
    assert await store.get("old") is None
    assert await store.get("new") == SessionRecord(b"v2", 2.0)


async def test_replace_of_a_missing_record_stores_nothing(store: SessionStore) -> None:
    assert not await store.replace("gone", "new", SessionRecord(b"v2", 2.0), 60)
    assert await store.get("new") is None


async def test_only_one_of_two_concurrent_rotations_wins(store: SessionStore) -> None:
    await store.put("old", SessionRecord(b"v1", 1.0), 60)
    moved = await asyncio.gather(
        *(store.replace("old", f"new{i}", SessionRecord(b"v2", 2.0), 60) for i in range(10))
    )
    assert sorted(moved) == [False] * 9 + [True]
    survivors = [i for i in range(10) if await store.get(f"new{i}") is not None]
    assert survivors == [moved.index(True)]


async def test_delete_says_whether_there_was_a_record(store: SessionStore) -> None:
    await store.put("k1", SessionRecord(b"x", 1.0), 60)
    assert await store.delete("k1")
    assert not await store.delete("k1")


async def test_concurrent_sessions_do_not_interfere(store: SessionStore) -> None:
    async def one(i: int) -> SessionRecord | None:
        await store.put(f"k{i}", SessionRecord(str(i).encode(), float(i)), 60)
        await store.touch(f"k{i}", float(i) + 0.5, 60)
        return await store.get(f"k{i}")

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert results == [SessionRecord(str(i).encode(), i + 0.5) for i in range(50)]


# -- the manager on every store -----------------------------------------------------------------------


async def test_created_session_loads_from_its_cookie(manager: SessionManager) -> None:
    session = await manager.create(principal=ALICE, data={"basket": [1, 2]})
    loaded = await manager.load(manager.cookie_value(session))
    assert loaded is not None
    assert loaded.id == session.id
    assert loaded.principal == ALICE
    assert loaded.data == {"basket": [1, 2]}
    assert loaded.csrf_secret == session.csrf_secret


async def test_saved_data_is_visible_on_the_next_load(manager: SessionManager) -> None:
    session = await manager.create()
    session.data["theme"] = "dark"
    await manager.save(session)
    loaded = await manager.load(manager.cookie_value(session))
    assert loaded is not None
    assert loaded.data == {"theme": "dark"}


async def test_login_rotates_the_id_and_the_old_cookie_stops_working(manager: SessionManager) -> None:
    anonymous = await manager.create(data={"basket": [7]})
    old_cookie = manager.cookie_value(anonymous)
    logged_in = await manager.login(anonymous, ALICE)
    assert logged_in.id != anonymous.id
    assert logged_in.csrf_secret != anonymous.csrf_secret
    assert await manager.load(old_cookie) is None
    loaded = await manager.load(manager.cookie_value(logged_in))
    assert loaded is not None
    assert loaded.principal == ALICE
    assert loaded.data == {"basket": [7]}


async def test_login_over_a_logged_in_session_carries_no_data(manager: SessionManager) -> None:
    previous = await manager.create(principal=ALICE, data={"draft": "alice's"})
    bob = await manager.login(previous, Principal("bob"))
    assert bob.data == {}
    assert await manager.load(manager.cookie_value(previous)) is None
    loaded = await manager.load(manager.cookie_value(bob))
    assert loaded is not None
    assert loaded.data == {}


async def test_rotate_at_privilege_change_replaces_the_principal(manager: SessionManager) -> None:
    session = await manager.create(principal=ALICE)
    admin = Principal("alice", roles=frozenset({"customer", "admin"}))
    rotated = await manager.rotate(session, principal=admin)
    assert await manager.load(manager.cookie_value(session)) is None
    loaded = await manager.load(manager.cookie_value(rotated))
    assert loaded is not None
    assert loaded.principal == admin


async def test_rotating_an_ended_session_fails_and_resurrects_nothing(manager: SessionManager) -> None:
    session = await manager.create(principal=ALICE)
    await manager.destroy(session)
    with pytest.raises(AuthenticationError, match="the session was ended"):
        await manager.rotate(session, principal=Principal("alice", roles=frozenset({"admin"})))


async def test_login_over_an_ended_session_still_logs_in(manager: SessionManager) -> None:
    session = await manager.create()
    await manager.destroy(session)
    logged_in = await manager.login(session, ALICE)
    assert await manager.load(manager.cookie_value(logged_in)) is not None


async def test_destroy_ends_the_session(manager: SessionManager) -> None:
    session = await manager.create(principal=ALICE)
    await manager.destroy(session)
    with pytest.raises(AuthenticationError, match="unknown or was ended"):
        await manager.require(manager.cookie_value(session))


async def test_idle_timeout_expires_a_session_without_use(manager: SessionManager, clock: Clock) -> None:
    session = await manager.create(principal=ALICE)
    cookie = manager.cookie_value(session)
    clock.advance(599)
    assert await manager.load(cookie) is not None  # used: the idle deadline moves
    clock.advance(599)
    assert await manager.load(cookie) is not None
    clock.advance(600)
    with pytest.raises(AuthenticationError, match="idle for more than 600 s"):
        await manager.require(cookie)
    # An expired session is deleted, not only refused.
    with pytest.raises(AuthenticationError, match="unknown or was ended"):
        await manager.require(cookie)


async def test_absolute_timeout_expires_even_an_active_session(manager: SessionManager, clock: Clock) -> None:
    session = await manager.create(principal=ALICE)
    cookie = manager.cookie_value(session)
    for _ in range(7):
        clock.advance(500)
        assert await manager.load(cookie) is not None
    clock.advance(500)  # 4000 s after creation
    with pytest.raises(AuthenticationError, match="absolute timeout of 3600 s"):
        await manager.require(cookie)


async def test_rotation_keeps_the_absolute_deadline(manager: SessionManager, clock: Clock) -> None:
    session = await manager.create(principal=ALICE)
    clock.advance(3000)
    rotated = await manager.rotate(session)
    clock.advance(601)
    # Idle or not, 3601 s after creation the session is over: rotation does not extend it.
    with pytest.raises(AuthenticationError, match="absolute timeout"):
        await manager.require(manager.cookie_value(rotated))


async def test_login_restarts_the_absolute_deadline(manager: SessionManager, clock: Clock) -> None:
    session = await manager.create()
    clock.advance(3000)
    logged_in = await manager.login(session, ALICE)
    clock.advance(500)
    assert await manager.load(manager.cookie_value(logged_in)) is not None


async def test_logout_racing_a_request_does_not_resurrect_the_session(
    manager: SessionManager, clock: Clock
) -> None:
    session = await manager.create(principal=ALICE)
    cookie = manager.cookie_value(session)
    clock.advance(120)  # past the touch interval, so the next load writes
    await asyncio.gather(manager.destroy(session), manager.load(cookie))
    assert await manager.load(cookie) is None


async def test_redis_keys_expire_with_the_idle_timeout_and_hold_no_cookie(redis_url: str) -> None:
    clock = Clock()
    async with RedisSessionStore(str(redis_url), key_prefix="t:s:") as store:
        manager = SessionManager(store, secret=SECRET, idle_timeout=600, absolute_timeout=3600, clock=clock)
        session = await manager.create(principal=ALICE)
        raw = aioredis.from_url(str(redis_url))
        try:
            keys = [k.decode() for k in await raw.keys("t:s:*")]
            assert len(keys) == 1
            assert session.id not in keys[0]  # the store is keyed by a hash of the id
            assert 590_000 < await raw.pttl(keys[0]) <= 600_000
            clock.advance(3300)
            await manager.rotate(session)
            # Only 300 s of the absolute lifetime remain: the new key expires then.
            (key,) = await raw.keys("t:s:*")
            assert 290_000 < await raw.pttl(key) <= 300_000
        finally:
            await raw.aclose()


async def test_unreachable_redis_raises_service_unavailable_never_no_session() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with RedisSessionStore(f"redis://127.0.0.1:{port}/0", timeout=0.5) as store:
        manager = SessionManager(store, secret=SECRET)
        with pytest.raises(ServiceUnavailableError, match="Redis session write failed"):
            await manager.create(principal=ALICE)
        elsewhere = SessionManager(MemorySessionStore(), secret=SECRET)
        cookie = elsewhere.cookie_value(await elsewhere.create())  # validly signed: Redis is asked
        with pytest.raises(ServiceUnavailableError, match="Redis session read failed"):
            await manager.load(cookie)


async def test_redis_store_must_be_started() -> None:
    store = RedisSessionStore("redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await store.get("k")
