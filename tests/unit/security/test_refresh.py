"""Refresh tokens: rotation, reuse detection revoking the family, expiry, and concurrent rotation."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from mainspring.errors import AuthenticationError, ValidationError
from mainspring.security._refresh import (
    IssuedRefreshToken,
    MemoryRefreshTokenStore,
    RefreshTokenService,
    RefreshTokenStore,
)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryRefreshTokenStore:
    return MemoryRefreshTokenStore()


@pytest.fixture
def service(store: MemoryRefreshTokenStore, clock: FakeClock) -> RefreshTokenService:
    return RefreshTokenService(store, ttl=3600, clock=clock)


def test_memory_store_satisfies_the_protocol(store: MemoryRefreshTokenStore) -> None:
    assert isinstance(store, RefreshTokenStore)


async def test_issued_token_is_opaque_random_and_stored_only_as_a_hash(
    service: RefreshTokenService, store: MemoryRefreshTokenStore
) -> None:
    a, b = await service.issue("user-1"), await service.issue("user-1")
    assert len(a.token) >= 43  # 32 random bytes, base64url
    assert a.token != b.token
    assert a.family_id != b.family_id
    assert a.token not in repr(a)
    hashes = list(store._records)
    assert hashlib.sha256(a.token.encode()).digest() in hashes
    assert all(a.token.encode() not in h for h in hashes)


async def test_rotation_returns_a_new_token_in_the_same_family(service: RefreshTokenService) -> None:
    first = await service.issue("user-1")
    second = await service.rotate(first.token)
    third = await service.rotate(second.token)
    assert len({first.token, second.token, third.token}) == 3
    assert first.family_id == second.family_id == third.family_id
    assert third.subject == "user-1"


async def test_reusing_a_rotated_token_revokes_the_whole_family(
    service: RefreshTokenService, store: MemoryRefreshTokenStore
) -> None:
    first = await service.issue("user-1")
    second = await service.rotate(first.token)
    other = await service.issue("user-2")
    with pytest.raises(AuthenticationError, match="already used") as info:
        await service.rotate(first.token)
    assert first.token not in str(info.value)
    assert await store.is_family_revoked(first.family_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.rotate(second.token)
    # Other families are untouched.
    assert (await service.rotate(other.token)).subject == "user-2"


async def test_expired_token_is_rejected(service: RefreshTokenService, clock: FakeClock) -> None:
    issued = await service.issue("user-1")
    clock.now += 3600
    with pytest.raises(AuthenticationError, match="expired"):
        await service.rotate(issued.token)


async def test_family_ttl_caps_the_chain_however_often_it_rotates(
    store: MemoryRefreshTokenStore, clock: FakeClock
) -> None:
    service = RefreshTokenService(store, ttl=3600, family_ttl=5000, clock=clock)
    token = await service.issue("user-1")
    clock.now += 3000
    token = await service.rotate(token.token)
    assert token.expires_at == 1_000_000.0 + 5000
    clock.now += 2000
    with pytest.raises(AuthenticationError, match="expired"):
        await service.rotate(token.token)


@pytest.mark.parametrize("bad", ["", "x" * 300, "é" * 43, None])
async def test_malformed_token_is_rejected(service: RefreshTokenService, bad: object) -> None:
    with pytest.raises(AuthenticationError, match="malformed"):
        await service.rotate(bad)  # type: ignore[arg-type]


async def test_unknown_token_is_rejected(service: RefreshTokenService) -> None:
    with pytest.raises(AuthenticationError, match="unknown"):
        await service.rotate("A" * 43)


async def test_explicit_family_revocation_stops_rotation(service: RefreshTokenService) -> None:
    issued = await service.issue("user-1")
    await service.revoke_family(issued.family_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.rotate(issued.token)


async def test_concurrent_rotations_of_one_token_let_exactly_one_win_and_revoke_the_family(
    service: RefreshTokenService, store: MemoryRefreshTokenStore
) -> None:
    issued = await service.issue("user-1")
    results = await asyncio.gather(*(service.rotate(issued.token) for _ in range(20)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, IssuedRefreshToken)]
    losers = [r for r in results if isinstance(r, AuthenticationError)]
    assert len(winners) == 1
    assert len(losers) == 19
    # A second use is indistinguishable from theft: the family goes, the winner's token with it.
    assert await store.is_family_revoked(issued.family_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.rotate(winners[0].token)


@pytest.mark.parametrize(("kwargs", "message"), [({"ttl": 0}, "ttl"), ({"family_ttl": -1}, "family_ttl")])
def test_bad_lifetimes_are_validation_errors(
    store: MemoryRefreshTokenStore, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RefreshTokenService(store, **kwargs)


async def test_empty_subject_is_a_validation_error(service: RefreshTokenService) -> None:
    with pytest.raises(ValidationError, match="subject"):
        await service.issue("")
