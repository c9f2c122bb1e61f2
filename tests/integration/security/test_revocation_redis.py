"""Revocation by jti on a real Redis: keys expire at the token's exp, a dead Redis fails closed."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest
import redis.asyncio as aioredis

from mainspring.errors import ServiceUnavailableError
from mainspring.security._revocation import RedisRevocationList
from mainspring.testing import ServiceURL

pytestmark = pytest.mark.integration


async def test_revoked_jti_is_stored_with_an_expiry_at_the_token_exp(redis_url: ServiceURL) -> None:
    exp = int(time.time()) + 300
    async with RedisRevocationList(str(redis_url), key_prefix="t:revoked:") as revoked:
        await revoked.revoke("jti-1", exp)
        assert await revoked.is_revoked("jti-1")
        assert not await revoked.is_revoked("jti-2")
    raw = aioredis.from_url(str(redis_url))
    try:
        assert await raw.expiretime("t:revoked:jti-1") == exp
    finally:
        await raw.aclose()


async def test_entry_disappears_when_the_token_expires(redis_url: ServiceURL) -> None:
    async with RedisRevocationList(str(redis_url)) as revoked:
        exp = math.ceil(time.time()) + 1
        await revoked.revoke("short", exp)
        assert await revoked.is_revoked("short")
        # Redis owns the expiry (no sweeper of ours): wait until just past exp and ask again.
        await asyncio.sleep(max(0.0, exp - time.time()) + 0.3)
        assert not await revoked.is_revoked("short")


async def test_already_expired_token_is_not_written(redis_url: ServiceURL) -> None:
    async with RedisRevocationList(str(redis_url)) as revoked:
        await revoked.revoke("old", time.time() - 5)
        assert not await revoked.is_revoked("old")


async def test_unreachable_redis_raises_service_unavailable_instead_of_answering() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with RedisRevocationList(f"redis://127.0.0.1:{port}/0", timeout=0.5) as revoked:
        with pytest.raises(ServiceUnavailableError, match="Redis revocation lookup failed"):
            await revoked.is_revoked("j")
        with pytest.raises(ServiceUnavailableError, match="Redis revocation write failed"):
            await revoked.revoke("j", time.time() + 60)
