"""Revocation by jti in memory: entries live exactly until the token's exp."""

from __future__ import annotations

import pytest

from mainspring.errors import ServiceUnavailableError, ValidationError
from mainspring.security._revocation import MemoryRevocationList, RedisRevocationList, RevocationList


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_both_backends_satisfy_the_protocol() -> None:
    assert isinstance(MemoryRevocationList(), RevocationList)
    assert isinstance(RedisRevocationList("redis://localhost:1/0"), RevocationList)


async def test_revoked_jti_is_revoked_until_its_expiry_then_forgotten() -> None:
    clock = FakeClock()
    revoked = MemoryRevocationList(clock=clock)
    await revoked.revoke("jti-1", clock.now + 60)
    assert await revoked.is_revoked("jti-1")
    assert not await revoked.is_revoked("jti-2")
    clock.now += 60
    assert not await revoked.is_revoked("jti-1")
    await revoked.revoke("jti-3", clock.now + 10)
    assert len(revoked) == 1  # jti-1 was purged


async def test_revoking_an_already_expired_token_stores_nothing() -> None:
    clock = FakeClock()
    revoked = MemoryRevocationList(clock=clock)
    await revoked.revoke("old", clock.now - 1)
    assert not await revoked.is_revoked("old")
    assert len(revoked) == 0


async def test_revoking_twice_keeps_the_later_expiry() -> None:
    clock = FakeClock()
    revoked = MemoryRevocationList(clock=clock)
    await revoked.revoke("j", clock.now + 100)
    await revoked.revoke("j", clock.now + 10)
    clock.now += 50
    assert await revoked.is_revoked("j")


@pytest.mark.parametrize("bad", ["", None, 42])
async def test_empty_or_non_string_jti_is_a_validation_error(bad: object) -> None:
    revoked = MemoryRevocationList()
    with pytest.raises(ValidationError, match="jti"):
        await revoked.revoke(bad, 1e12)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="jti"):
        await revoked.is_revoked(bad)  # type: ignore[arg-type]


async def test_redis_list_used_before_start_says_to_start_it() -> None:
    revoked = RedisRevocationList("redis://localhost:1/0")
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await revoked.is_revoked("j")


def test_redis_list_refuses_a_non_positive_timeout() -> None:
    with pytest.raises(ValidationError, match="timeout"):
        RedisRevocationList("redis://localhost:1/0", timeout=0)
