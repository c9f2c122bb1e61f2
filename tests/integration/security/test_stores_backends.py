"""What the Redis and SQL security stores do beyond the shared contract: expiry, failures, transactions."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mainspring.db import Database
from mainspring.errors import ConfigError, InternalError, ServiceUnavailableError, ValidationError
from mainspring.security import (
    ApiKeyRecord,
    RedisApiKeyStore,
    RedisRecoveryCodeStore,
    RedisRefreshTokenStore,
    RedisTotpReplayStore,
    RefreshTokenRecord,
    RotateOutcome,
    SqlApiKeyStore,
    SqlRecoveryCodeStore,
    SqlRefreshTokenStore,
    SqlTotpReplayStore,
)
from mainspring.testing import ServiceURL

pytestmark = pytest.mark.integration


def token(name: bytes, **changes: object) -> RefreshTokenRecord:
    now = time.time()
    record = RefreshTokenRecord(
        token_hash=hashlib.sha256(name).digest(),
        family_id="fam",
        subject="user-1",
        issued_at=now,
        expires_at=now + 600.5,
        family_expires_at=now + 1200.0,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


API_KEY = ApiKeyRecord(
    prefix="abcdef1234", owner="svc", secret_hash=hashlib.sha256(b"s").digest(), created_at=1.0
)


# --- Redis ---------------------------------------------------------------------------------------------


async def test_redis_refresh_tokens_and_their_family_expire_with_the_last_token(
    redis_url: ServiceURL,
) -> None:
    first = token(b"t1")
    later = dataclasses.replace(token(b"t2"), expires_at=first.expires_at + 300, family_id="")
    raw = aioredis.from_url(str(redis_url))
    try:
        async with RedisRefreshTokenStore(str(redis_url), key_prefix="rt:") as store:
            await store.add(first)
            outcome, stored = await store.rotate(first.token_hash, later, first.issued_at + 1)
            assert outcome is RotateOutcome.ROTATED
            assert stored is not None

            first_at = await raw.pexpiretime(f"rt:t:{first.token_hash.hex()}")
            second_at = await raw.pexpiretime(f"rt:t:{stored.token_hash.hex()}")
            family_at = await raw.pexpiretime("rt:f:fam")
    finally:
        await raw.aclose()
    assert first_at == math.ceil(first.expires_at * 1000)
    assert second_at == math.ceil(stored.expires_at * 1000) == math.ceil((first.expires_at + 300) * 1000)
    assert family_at == second_at, "the family (and a revocation) lives as long as its last token"


async def test_redis_totp_replay_record_expires_after_the_window(redis_url: ServiceURL) -> None:
    raw = aioredis.from_url(str(redis_url))
    try:
        async with RedisTotpReplayStore(str(redis_url), key_prefix="tr:") as store:
            assert await store.claim("totp:abc", 7, ttl=90)
            ttl_ms = await raw.pttl("tr:totp:abc")
            assert await raw.get("tr:totp:abc") == b"7"
    finally:
        await raw.aclose()
    assert 0 < ttl_ms <= 90_000


async def test_redis_api_key_store_reports_a_foreign_value_as_an_internal_error(
    redis_url: ServiceURL,
) -> None:
    raw = aioredis.from_url(str(redis_url))
    try:
        await raw.set("ak:abcdef1234", b"not json")
    finally:
        await raw.aclose()
    async with RedisApiKeyStore(str(redis_url), key_prefix="ak:") as store:
        with pytest.raises(InternalError, match="not a record this store wrote"):
            await store.get("abcdef1234")


async def test_redis_stores_fail_with_service_unavailable_when_redis_is_down_or_not_started() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    async with RedisApiKeyStore(url, timeout=0.5) as keys:
        with pytest.raises(ServiceUnavailableError, match="API key store: lookup failed"):
            await keys.get("abcdef1234")
    async with RedisRefreshTokenStore(url, timeout=0.5) as tokens:
        with pytest.raises(ServiceUnavailableError, match="refresh token store: rotate failed"):
            await tokens.rotate(hashlib.sha256(b"x").digest(), token(b"y"), time.time())
    async with RedisTotpReplayStore(url, timeout=0.5) as totp:
        with pytest.raises(ServiceUnavailableError, match="claim failed"):
            await totp.claim("k", 1, ttl=30)
    async with RedisRecoveryCodeStore(url, timeout=0.5) as codes:
        with pytest.raises(ServiceUnavailableError, match="consume failed"):
            await codes.consume("u", "h")
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await RedisRecoveryCodeStore(url).hashes("u")
    with pytest.raises(ValidationError, match="timeout"):
        RedisApiKeyStore(url, timeout=0)


# --- SQL -----------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'security.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url").sqlalchemy_url)
    async with Database(url) as db:
        await db.create_all(SqlApiKeyStore.metadata)
        yield db


async def test_sql_stores_join_the_callers_transaction_and_roll_back_with_it(database: Database) -> None:
    keys = SqlApiKeyStore(database)
    codes = SqlRecoveryCodeStore(database)

    async def write_then_fail() -> None:
        async with database.transaction():
            assert await keys.add(API_KEY)
            await codes.replace("u-1", ["h1"])
            raise RuntimeError("business rule failed after the writes")

    with pytest.raises(RuntimeError, match="business rule"):
        await write_then_fail()

    assert await keys.get(API_KEY.prefix) is None
    assert await codes.hashes("u-1") == []


async def test_a_taken_prefix_inside_a_transaction_leaves_the_transaction_usable(database: Database) -> None:
    # On PostgreSQL a failed INSERT aborts the whole transaction unless it ran in a SAVEPOINT.
    keys = SqlApiKeyStore(database)
    codes = SqlRecoveryCodeStore(database)
    async with database.transaction():
        assert await keys.add(API_KEY)
        assert not await keys.add(dataclasses.replace(API_KEY, owner="other"))
        await codes.replace("u-1", ["h1"])

    found = await keys.get(API_KEY.prefix)
    assert found is not None
    assert found.owner == "svc"
    assert await codes.hashes("u-1") == ["h1"]


async def test_purge_expired_deletes_only_what_has_expired(database: Database) -> None:
    tokens = SqlRefreshTokenStore(database)
    now = time.time()
    await tokens.add(token(b"old", family_id="fam-old", expires_at=now - 1))
    await tokens.add(token(b"live", family_id="fam-live"))
    clock = [now]
    totp = SqlTotpReplayStore(database, clock=lambda: clock[0])
    await totp.claim("gone", 1, ttl=30)
    clock[0] += 60
    await totp.claim("kept", 1, ttl=30)

    assert await tokens.purge_expired() == 1
    assert await totp.purge_expired() == 1

    unknown = await tokens.rotate(hashlib.sha256(b"old").digest(), token(b"s1"), now)
    live = await tokens.rotate(hashlib.sha256(b"live").digest(), token(b"s2"), now)
    assert unknown == (RotateOutcome.UNKNOWN, None)
    assert live[0] is RotateOutcome.ROTATED
    assert not await totp.claim("kept", 1, ttl=30), "an unexpired record still blocks its step"
    assert await totp.claim("gone", 1, ttl=30), "a purged key starts afresh"


async def test_an_expired_totp_record_no_longer_blocks_its_step(database: Database) -> None:
    clock = [1000.0]
    totp = SqlTotpReplayStore(database, clock=lambda: clock[0])
    assert await totp.claim("k", 5, ttl=30)
    assert not await totp.claim("k", 5, ttl=30)
    clock[0] += 30
    assert await totp.claim("k", 5, ttl=30)


def test_sql_stores_need_a_database() -> None:
    with pytest.raises(ConfigError, match=r"must be a mainspring\.db\.Database"):
        SqlRefreshTokenStore("sqlite+aiosqlite:///x.db")  # type: ignore[arg-type]
