"""The security store contracts, run against every backend: memory, Redis, SQLite, PostgreSQL, MariaDB.

One suite per protocol (API keys, refresh tokens, TOTP replay, recovery codes). The concurrency tests
start 20 real tasks at once; on the SQL backends each has its own connection and transaction, so the
database's locks, not the event loop, decide who wins.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from sqlalchemy import delete

from mainspring._lifecycle import AsyncLifecycle
from mainspring.db import Database
from mainspring.errors import AuthenticationError, ValidationError
from mainspring.security import (
    ApiKeyRecord,
    ApiKeyService,
    ApiKeyStore,
    MemoryApiKeyStore,
    MemoryRecoveryCodeStore,
    MemoryRefreshTokenStore,
    MemoryTotpReplayStore,
    RecoveryCodes,
    RecoveryCodeStore,
    RedisApiKeyStore,
    RedisRecoveryCodeStore,
    RedisRefreshTokenStore,
    RedisTotpReplayStore,
    RefreshTokenRecord,
    RefreshTokenService,
    RefreshTokenStore,
    RotateOutcome,
    SqlApiKeyStore,
    SqlRecoveryCodeStore,
    SqlRefreshTokenStore,
    SqlTotpReplayStore,
    Totp,
    TotpReplayStore,
)
from mainspring.testing._isolation import isolated_mariadb, isolated_postgres, isolated_redis
from mainspring.testing.plugin import _provide

pytestmark = pytest.mark.integration

T = TypeVar("T")
ALL = ["memory", "redis", "sqlite", "postgres", "mariadb"]
SHARED = ALL[1:]  # the stores that check their input (memory trusts its in-process callers)
RACERS = 20
NOW = 1_800_000_000.0


class Backend:
    """Builds stores of one backend; everything it starts is stopped when the test ends."""

    def __init__(
        self, name: str, stack: AsyncExitStack, *, redis: str = "", database: Database | None = None
    ):
        self.name = name
        self._stack = stack
        self._redis = redis
        self._database = database

    async def warm(self) -> None:
        """Open a pooled connection per racer first, so the racers collide instead of queueing to connect."""
        if self._database is None:
            return
        engine = self._database.engine
        connected = asyncio.Barrier(RACERS)

        async def hold() -> None:
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
                await connected.wait()

        await asyncio.gather(*(hold() for _ in range(RACERS)))

    async def _started(self, store: T) -> T:
        if isinstance(store, AsyncLifecycle):
            await self._stack.enter_async_context(store)
        return store

    async def api_keys(self) -> ApiKeyStore:
        if self.name == "memory":
            return MemoryApiKeyStore()
        if self._database is None:
            return await self._started(RedisApiKeyStore(self._redis, timeout=5.0))
        return SqlApiKeyStore(self._database)

    async def refresh_tokens(self) -> RefreshTokenStore:
        if self.name == "memory":
            return MemoryRefreshTokenStore()
        if self._database is None:
            return await self._started(RedisRefreshTokenStore(self._redis, timeout=5.0))
        return SqlRefreshTokenStore(self._database)

    async def totp_replay(self) -> TotpReplayStore:
        if self.name == "memory":
            return MemoryTotpReplayStore()
        if self._database is None:
            return await self._started(RedisTotpReplayStore(self._redis, timeout=5.0))
        return SqlTotpReplayStore(self._database)

    async def recovery_codes(self) -> RecoveryCodeStore:
        if self.name == "memory":
            return MemoryRecoveryCodeStore()
        if self._database is None:
            return await self._started(RedisRecoveryCodeStore(self._redis, timeout=5.0))
        return SqlRecoveryCodeStore(self._database)


# One database (or Redis database number) per backend for the whole module, emptied before each test:
# creating a PostgreSQL or MariaDB database per test would cost more than all the tests together.


def _module_url(pytestconfig: pytest.Config, name: str, isolate: Any) -> Iterator[str]:
    for url in _provide(pytestconfig, name, isolate):
        yield str(url.sqlalchemy_url) if name != "redis" else str(url)


@pytest.fixture(scope="module")
def redis_module_url(pytestconfig: pytest.Config) -> Iterator[str]:
    yield from _module_url(pytestconfig, "redis", isolated_redis)


@pytest.fixture(scope="module")
def postgres_module_url(pytestconfig: pytest.Config) -> Iterator[str]:
    yield from _module_url(pytestconfig, "postgres", isolated_postgres)


@pytest.fixture(scope="module")
def mariadb_module_url(pytestconfig: pytest.Config) -> Iterator[str]:
    yield from _module_url(pytestconfig, "mariadb", isolated_mariadb)


@pytest.fixture(scope="module")
def sqlite_module_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('stores') / 'security.db'}"


async def _open(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    name: str = request.param
    async with AsyncExitStack() as stack:
        if name == "memory":
            yield Backend(name, stack)
            return
        url: str = request.getfixturevalue(f"{name}_module_url")
        if name == "redis":
            client = aioredis.from_url(url)
            try:
                await client.flushdb()
            finally:
                await client.aclose()
            yield Backend(name, stack, redis=url)
            return
        # Room for every racer to hold its own connection at once.
        database = Database(url, pool_size=RACERS, max_overflow=5, pool_timeout=20.0)
        await stack.enter_async_context(database)
        await database.create_all(SqlApiKeyStore.metadata)
        async with database.transaction() as unit:
            for table in reversed(SqlApiKeyStore.metadata.sorted_tables):
                await unit.session.execute(delete(table))
        yield Backend(name, stack, database=database)


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for opened in _open(request):
        yield opened


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async for opened in _open(request):
        yield opened


async def race(n: int, call: Callable[[], Awaitable[T]]) -> list[T | BaseException]:
    """Run ``call`` ``n`` times concurrently, all released at once; return results and exceptions."""
    gate = asyncio.Event()

    async def one() -> T:
        await gate.wait()
        return await call()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)
    gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def key_record(prefix: str = "abcdef1234", **changes: Any) -> ApiKeyRecord:
    record = ApiKeyRecord(
        prefix=prefix,
        owner="svc-billing",
        secret_hash=hashlib.sha256(b"secret").digest(),
        scopes=("orders:read", "orders:write"),
        name="ci",
        created_at=NOW,
        expires_at=NOW + 86400.5,
    )
    return dataclasses.replace(record, **changes)


def token_record(token: bytes = b"t1", **changes: Any) -> RefreshTokenRecord:
    record = RefreshTokenRecord(
        token_hash=hashlib.sha256(token).digest(),
        family_id="fam-1",
        subject="user-42",
        issued_at=NOW,
        expires_at=NOW + 3600.25,
        family_expires_at=NOW + 7200.0,
    )
    return dataclasses.replace(record, **changes)


def successor(token: bytes, *, expires_at: float = NOW + 9000.0) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=hashlib.sha256(token).digest(),
        family_id="",
        subject="",
        issued_at=NOW + 10,
        expires_at=expires_at,
    )


# --- API keys ------------------------------------------------------------------------------------------


async def test_api_key_store_adds_once_gets_and_updates_existing_records_only(backend: Backend) -> None:
    store = await backend.api_keys()
    record = key_record()

    assert await store.add(record)
    assert not await store.add(key_record(owner="someone-else")), "a taken prefix is refused"
    assert await store.get(record.prefix) == record
    used = dataclasses.replace(record, last_used_at=NOW + 60.125, scopes=(), name=None, expires_at=None)
    assert await store.update(used)
    assert await store.get(record.prefix) == used
    assert not await store.update(key_record(prefix="nosuchkey0"))
    assert await store.get("nosuchkey0") is None


async def test_api_key_update_never_clears_revoked(backend: Backend) -> None:
    # verify() reads the key, revoke() lands, then verify() writes last_used_at from its stale copy.
    store = await backend.api_keys()
    stale = key_record()
    await store.add(stale)
    await store.update(dataclasses.replace(stale, revoked=True))

    assert await store.update(dataclasses.replace(stale, last_used_at=NOW + 1))

    found = await store.get(stale.prefix)
    assert found is not None
    assert found.revoked
    assert found.last_used_at == NOW + 1


async def test_api_key_service_issues_verifies_and_revokes_through_the_store(backend: Backend) -> None:
    keys = ApiKeyService(await backend.api_keys(), clock=lambda: NOW)
    issued = await keys.issue("svc-billing", scopes=["orders:read"], expires_in=3600)

    record = await keys.verify(issued.key)
    assert (record.owner, record.scopes, record.last_used_at) == ("svc-billing", ("orders:read",), NOW)
    await keys.revoke(issued.prefix)
    with pytest.raises(AuthenticationError, match="was revoked"):
        await keys.verify(issued.key)


async def test_concurrent_adds_of_one_prefix_store_exactly_one(backend: Backend) -> None:
    store = await backend.api_keys()
    await backend.warm()
    results = await race(RACERS, lambda: store.add(key_record(prefix="samepref00")))
    assert sorted(map(repr, results)) == ["False"] * (RACERS - 1) + ["True"]


BAD_KEY_RECORDS = [
    ({"owner": ""}, "owner"),
    ({"owner": "x" * 256}, "owner"),
    ({"owner": 42}, "owner"),
    ({"secret_hash": b"short"}, "secret_hash"),
    ({"scopes": "orders:read"}, "scopes"),
    ({"scopes": ("",)}, "scopes"),
    ({"prefix": ""}, "prefix"),
    ({"name": ""}, "name"),
    ({"expires_at": float("nan")}, "expires_at"),
]


async def test_api_key_store_rejects_bad_records_naming_the_field(shared: Backend) -> None:
    store = await shared.api_keys()
    for change, field in BAD_KEY_RECORDS:
        with pytest.raises(ValidationError, match=field):
            await store.add(key_record(**change))
        with pytest.raises(ValidationError, match=field):
            await store.update(key_record(**change))
    with pytest.raises(ValidationError, match="prefix"):
        await store.get("")
    with pytest.raises(ValidationError, match="ApiKeyRecord"):
        await store.add({"prefix": "abc"})  # type: ignore[arg-type]
    assert await store.get(key_record().prefix) is None, "nothing was stored"


# --- refresh tokens ------------------------------------------------------------------------------------


async def test_rotation_retires_the_token_and_stores_a_capped_successor(backend: Backend) -> None:
    store = await backend.refresh_tokens()
    first = token_record()
    await store.add(first)

    outcome, stored = await store.rotate(first.token_hash, successor(b"t2"), NOW + 5)

    assert outcome is RotateOutcome.ROTATED
    assert stored == RefreshTokenRecord(
        token_hash=hashlib.sha256(b"t2").digest(),
        family_id="fam-1",
        subject="user-42",
        issued_at=NOW + 10,
        expires_at=NOW + 7200.0,  # capped by the family deadline
        family_expires_at=NOW + 7200.0,
    )
    outcome, again = await store.rotate(stored.token_hash, successor(b"t3", expires_at=NOW + 100), NOW + 6)
    assert outcome is RotateOutcome.ROTATED
    assert again is not None
    assert again.expires_at == NOW + 100


async def test_reuse_of_a_rotated_token_revokes_the_whole_family(backend: Backend) -> None:
    store = await backend.refresh_tokens()
    first = token_record()
    await store.add(first)
    await store.rotate(first.token_hash, successor(b"t2"), NOW + 5)

    outcome, found = await store.rotate(first.token_hash, successor(b"t3"), NOW + 6)

    assert outcome is RotateOutcome.REUSED
    assert found is not None
    assert (found.family_id, found.used) == ("fam-1", True)
    assert await store.is_family_revoked("fam-1")  # type: ignore[attr-defined]
    outcome, _ = await store.rotate(hashlib.sha256(b"t2").digest(), successor(b"t4"), NOW + 7)
    assert outcome is RotateOutcome.REVOKED, "the successor issued before the reuse dies with its family"


async def test_unknown_expired_and_revoked_tokens_are_told_apart(backend: Backend) -> None:
    store = await backend.refresh_tokens()
    await store.add(token_record(b"old", family_id="fam-old", expires_at=NOW + 10))
    await store.add(token_record(b"live", family_id="fam-live"))
    await store.add(token_record(b"other", family_id="fam-other"))
    await store.revoke_family("fam-live")
    await store.revoke_family("fam-never-seen")

    unknown = await store.rotate(hashlib.sha256(b"nope").digest(), successor(b"s1"), NOW)
    expired = await store.rotate(hashlib.sha256(b"old").digest(), successor(b"s2"), NOW + 10)
    revoked = await store.rotate(hashlib.sha256(b"live").digest(), successor(b"s3"), NOW)

    assert unknown == (RotateOutcome.UNKNOWN, None)
    assert expired[0] is RotateOutcome.EXPIRED
    assert revoked[0] is RotateOutcome.REVOKED
    assert not await store.is_family_revoked("fam-other")  # type: ignore[attr-defined]
    assert (await store.rotate(hashlib.sha256(b"other").digest(), successor(b"s4"), NOW))[
        0
    ] is RotateOutcome.ROTATED


async def test_twenty_concurrent_rotations_of_one_token_yield_one_successor_and_revoke_the_family(
    backend: Backend,
) -> None:
    store = await backend.refresh_tokens()
    service = RefreshTokenService(store, ttl=3600)
    issued = await service.issue("user-42")

    await backend.warm()
    results = await race(RACERS, lambda: service.rotate(issued.token))

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AuthenticationError) for r in losers), losers
    assert any("already used" in r.message for r in losers if isinstance(r, AuthenticationError))
    assert await store.is_family_revoked(issued.family_id)  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError, match="session was revoked"):
        await service.rotate(winners[0].token)


BAD_TOKEN_RECORDS = [
    ({"token_hash": b"x" * 31}, "token_hash"),
    ({"token_hash": "ab" * 32}, "token_hash"),
    ({"family_id": ""}, "family_id"),
    ({"subject": "s" * 256}, "subject"),
    ({"expires_at": float("inf")}, "expires_at"),
    ({"family_expires_at": "soon"}, "family_expires_at"),
]


async def test_refresh_token_store_rejects_bad_input_naming_the_field(shared: Backend) -> None:
    store = await shared.refresh_tokens()
    for change, field in BAD_TOKEN_RECORDS:
        with pytest.raises(ValidationError, match=field):
            await store.add(token_record(**change))
    with pytest.raises(ValidationError, match="token_hash"):
        await store.rotate(b"too short", successor(b"s"), NOW)
    with pytest.raises(ValidationError, match=r"successor\.token_hash"):
        await store.rotate(
            hashlib.sha256(b"t").digest(), dataclasses.replace(successor(b"s"), token_hash=b""), NOW
        )
    with pytest.raises(ValidationError, match="now"):
        await store.rotate(hashlib.sha256(b"t").digest(), successor(b"s"), float("nan"))
    with pytest.raises(ValidationError, match="family_id"):
        await store.revoke_family("")


async def test_twenty_concurrent_logins_each_start_their_own_family(backend: Backend) -> None:
    # Unrelated inserts into one index range: on MariaDB gap locks can deadlock them; the store reruns.
    service = RefreshTokenService(await backend.refresh_tokens(), ttl=3600)
    users = iter(range(RACERS))

    await backend.warm()
    results = await race(RACERS, lambda: service.issue(f"user-{next(users)}"))

    issued = [r for r in results if not isinstance(r, BaseException)]
    assert len(issued) == RACERS, results
    assert len({r.family_id for r in issued}) == RACERS
    rotated = await asyncio.gather(*(service.rotate(r.token) for r in issued))
    assert sorted(r.subject for r in rotated) == sorted(f"user-{n}" for n in range(RACERS))


# --- TOTP replay ---------------------------------------------------------------------------------------


async def test_totp_claim_accepts_only_later_steps_per_key(backend: Backend) -> None:
    store = await backend.totp_replay()

    assert await store.claim("totp:alice", 100, ttl=90)
    assert not await store.claim("totp:alice", 100, ttl=90), "the same step twice"
    assert not await store.claim("totp:alice", 99, ttl=90), "an earlier step after a later one"
    assert await store.claim("totp:bob", 99, ttl=90), "keys are independent"
    assert await store.claim("totp:alice", 101, ttl=90)


async def test_twenty_concurrent_uses_of_one_totp_code_accept_exactly_one(backend: Backend) -> None:
    store = await backend.totp_replay()
    totp = Totp(Totp.generate_secret(), replay_store=store)
    code = totp.code()

    await backend.warm()
    results = await race(RACERS, lambda: totp.verify(code))

    assert sorted(map(repr, results)) == ["False"] * (RACERS - 1) + ["True"]


async def test_twenty_concurrent_claims_of_a_known_key_accept_exactly_one(backend: Backend) -> None:
    store = await backend.totp_replay()
    await store.claim("totp:carol", 5, ttl=90)

    await backend.warm()
    results = await race(RACERS, lambda: store.claim("totp:carol", 6, ttl=90))

    assert sorted(map(repr, results)) == ["False"] * (RACERS - 1) + ["True"]


BAD_CLAIMS: list[tuple[Any, Any, Any, str]] = [
    ("", 1, 30.0, "key"),
    ("k" * 256, 1, 30.0, "key"),
    (None, 1, 30.0, "key"),
    ("k", -1, 30.0, "step"),
    ("k", True, 30.0, "step"),
    ("k", 1.5, 30.0, "step"),
    ("k", 1, 0.0, "ttl"),
    ("k", 1, float("nan"), "ttl"),
]


async def test_totp_replay_store_rejects_bad_input_naming_the_field(shared: Backend) -> None:
    store = await shared.totp_replay()
    for key, step, ttl, message in BAD_CLAIMS:
        with pytest.raises(ValidationError, match=message):
            await store.claim(key, step, ttl=ttl)
    assert await store.claim("k", 1, ttl=30.0), "nothing was recorded by the refused calls"


# --- recovery codes ------------------------------------------------------------------------------------


async def test_recovery_store_replaces_lists_and_consumes_once(backend: Backend) -> None:
    store = await backend.recovery_codes()
    await store.replace("u-1", ["h1", "h2", "h3"])
    await store.replace("u-2", ["h1"])

    assert sorted(await store.hashes("u-1")) == ["h1", "h2", "h3"]
    assert await store.consume("u-1", "h2")
    assert not await store.consume("u-1", "h2"), "used up"
    assert not await store.consume("u-1", "unknown")
    assert sorted(await store.hashes("u-1")) == ["h1", "h3"]
    assert await store.hashes("u-2") == ["h1"], "users are independent"
    await store.replace("u-1", ["h9"])
    assert await store.hashes("u-1") == ["h9"]
    await store.replace("u-1", [])
    assert await store.hashes("u-1") == []
    assert await store.hashes("nobody") == []


async def test_twenty_concurrent_uses_of_one_recovery_code_accept_exactly_one(backend: Backend) -> None:
    codes = RecoveryCodes(await backend.recovery_codes(), count=3)
    shown = await codes.issue("u-1")

    await backend.warm()
    results = await race(RACERS, lambda: codes.verify_and_consume("u-1", shown[1]))

    assert sorted(map(repr, results)) == ["False"] * (RACERS - 1) + ["True"]
    assert await codes.remaining("u-1") == 2


async def test_twenty_users_replacing_their_codes_at_once_all_succeed(backend: Backend) -> None:
    codes = RecoveryCodes(await backend.recovery_codes(), count=2)
    users = iter(range(RACERS))

    await backend.warm()
    results = await race(RACERS, lambda: codes.issue(f"u-{next(users)}"))

    assert all(isinstance(r, list) and len(r) == 2 for r in results), results
    assert [await codes.remaining(f"u-{n}") for n in range(RACERS)] == [2] * RACERS


BAD_RECOVERY_CALLS: list[tuple[Callable[[Any], Awaitable[object]], str]] = [
    (lambda store: store.replace("", ["h"]), "user_id"),
    (lambda store: store.replace("u", "sha256$ab$cd"), "hashes"),
    (lambda store: store.replace("u", ["x" * 256]), "hashes"),
    (lambda store: store.replace("u", [""]), "hashes"),
    (lambda store: store.hashes("u" * 256), "user_id"),
    (lambda store: store.consume("u", None), "hash must be a str"),
]


async def test_recovery_code_store_rejects_bad_input_naming_the_field(shared: Backend) -> None:
    store = await shared.recovery_codes()
    for call, message in BAD_RECOVERY_CALLS:
        with pytest.raises(ValidationError, match=message):
            await call(store)
    assert await store.hashes("u") == [], "nothing was stored"
