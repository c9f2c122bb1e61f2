"""PasswordHasher: argon2id hashing, bcrypt migration, rehash detection, bad input, async off-loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import argon2
import bcrypt
import pytest

from mainspring.errors import ConfigError, ValidationError
from mainspring.security import BCRYPT_MAX_PASSWORD_BYTES, MAX_PASSWORD_CHARS, PasswordHasher
from mainspring.testing import capture_logs

# Cheap parameters keep the suite fast; the defaults are checked separately.
FAST: dict[str, Any] = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(**FAST)


def _bcrypt(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode("ascii")


def test_defaults_are_argon2id_with_at_least_owasp_parameters() -> None:
    hashed = PasswordHasher().hash("correct horse battery staple")
    params = argon2.extract_parameters(hashed)
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= 19456
    assert params.time_cost >= 2
    assert params.parallelism == 1


def test_hash_then_verify_round_trips(hasher: PasswordHasher) -> None:
    hashed = hasher.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert hasher.verify(hashed, "correct horse battery staple")


def test_wrong_password_does_not_verify(hasher: PasswordHasher) -> None:
    hashed = hasher.hash("correct horse battery staple")
    assert not hasher.verify(hashed, "correct horse battery stapler")


def test_same_password_hashes_differently_each_time(hasher: PasswordHasher) -> None:
    assert hasher.hash("same password here") != hasher.hash("same password here")


def test_tunable_parameters_end_up_in_the_hash() -> None:
    hashed = PasswordHasher(time_cost=3, memory_cost=2048, parallelism=2).hash("x" * 12)
    params = argon2.extract_parameters(hashed)
    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 2048, 2)


def test_unicode_forms_of_the_same_password_verify(hasher: PasswordHasher) -> None:
    composed = "caf\u00e9 password"
    decomposed = "cafe\u0301 password"
    assert hasher.verify(hasher.hash(composed), decomposed)


def test_normalization_can_be_turned_off() -> None:
    hasher = PasswordHasher(**FAST, normalize=False)
    assert not hasher.verify(hasher.hash("caf\u00e9 password"), "cafe\u0301 password")


@pytest.mark.parametrize("bad", [None, 123, b"bytes password", ["list"]])
def test_non_str_password_is_a_validation_error(hasher: PasswordHasher, bad: Any) -> None:
    with pytest.raises(ValidationError, match="must be a str"):
        hasher.hash(bad)
    with pytest.raises(ValidationError, match="must be a str"):
        hasher.verify(hasher.hash("fine password"), bad)


def test_empty_password_is_a_validation_error(hasher: PasswordHasher) -> None:
    with pytest.raises(ValidationError, match="empty"):
        hasher.hash("")
    with pytest.raises(ValidationError, match="empty"):
        hasher.verify(hasher.hash("fine password"), "")


def test_overlong_password_is_refused_before_hashing(hasher: PasswordHasher) -> None:
    with pytest.raises(ValidationError, match="longer than") as info:
        hasher.hash("a" * (MAX_PASSWORD_CHARS + 1))
    assert info.value.errors[0]["type"] == "too_long"


@pytest.mark.parametrize("bad_hash", [None, "", 42])
def test_non_str_or_empty_hash_is_a_validation_error(hasher: PasswordHasher, bad_hash: Any) -> None:
    with pytest.raises(ValidationError, match="hash"):
        hasher.verify(bad_hash, "some password")
    with pytest.raises(ValidationError, match="hash"):
        hasher.needs_rehash(bad_hash)


@pytest.mark.parametrize("garbage", ["plaintext", "$argon2id$garbage", "$1$md5crypt$abc"])
def test_unrecognised_hash_is_a_validation_error(hasher: PasswordHasher, garbage: str) -> None:
    with pytest.raises(ValidationError) as info:
        hasher.verify(garbage, "some password")
    assert info.value.code == "invalid_password_hash"
    with pytest.raises(ValidationError):
        hasher.needs_rehash(garbage)


def test_corrupt_bcrypt_hash_is_a_validation_error(hasher: PasswordHasher) -> None:
    with pytest.raises(ValidationError) as info:
        hasher.verify("$2b$04$short", "some password")
    assert info.value.code == "invalid_password_hash"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"time_cost": 0}, "time_cost"),
        ({"memory_cost": 4}, "memory_cost"),
        ({"parallelism": 0}, "parallelism"),
        ({"salt_len": 8}, "salt_len"),
        ({"hash_len": 4}, "hash_len"),
        ({"time_cost": True}, "time_cost"),
    ],
)
def test_invalid_parameters_are_a_config_error(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PasswordHasher(**params)
    assert [p.path for p in info.value.problems] == [field]


def test_bcrypt_hash_of_a_migrated_user_verifies(hasher: PasswordHasher) -> None:
    for prefix in ("$2b$", "$2a$", "$2y$"):
        hashed = prefix + _bcrypt(b"legacy password")[4:]
        assert hasher.verify(hashed, "legacy password")
        assert not hasher.verify(hashed, "wrong password")


def test_bcrypt_hash_needs_rehash(hasher: PasswordHasher) -> None:
    assert hasher.needs_rehash(_bcrypt(b"legacy password"))


def test_bcrypt_refuses_passwords_over_72_bytes_instead_of_truncating(hasher: PasswordHasher) -> None:
    prefix = "p" * BCRYPT_MAX_PASSWORD_BYTES
    # What a truncating legacy system stored for the longer password.
    hashed = _bcrypt(prefix.encode())
    with capture_logs() as logs:
        assert not hasher.verify(hashed, prefix + "anything after byte 72")
    assert [r["event"] for r in logs] == ["password_rejected_bcrypt_limit"]
    assert "p" * 10 not in repr(logs)
    # Exactly 72 bytes is still fine.
    assert hasher.verify(hashed, prefix)


def test_bcrypt_counts_bytes_not_characters(hasher: PasswordHasher) -> None:
    password = "\u00e9" * 37  # 37 characters, 74 UTF-8 bytes
    hashed = _bcrypt(password.encode()[:72])
    assert not hasher.verify(hashed, password)


def test_bcrypt_refuses_passwords_with_nul_bytes(hasher: PasswordHasher) -> None:
    hashed = _bcrypt(b"abc")
    assert not hasher.verify(hashed, "abc\x00def")


def test_fresh_hash_does_not_need_rehash(hasher: PasswordHasher) -> None:
    assert not hasher.needs_rehash(hasher.hash("fresh password"))


@pytest.mark.parametrize(
    "weaker",
    [
        {"time_cost": 1, "memory_cost": 2048},
        {"time_cost": 2, "memory_cost": 1024},
        {"time_cost": 2, "memory_cost": 2048, "hash_len": 16},
        {"time_cost": 2, "memory_cost": 2048, "salt_len": 8},
    ],
)
def test_weaker_argon2_hash_needs_rehash(weaker: dict[str, Any]) -> None:
    old = argon2.PasswordHasher(parallelism=1, **weaker).hash("some password")
    assert PasswordHasher(time_cost=2, memory_cost=2048).needs_rehash(old)


def test_stronger_argon2_hash_does_not_need_rehash() -> None:
    stronger = PasswordHasher(time_cost=3, memory_cost=4096).hash("some password")
    assert not PasswordHasher(time_cost=2, memory_cost=2048).needs_rehash(stronger)


def test_argon2i_hash_verifies_but_needs_rehash(hasher: PasswordHasher) -> None:
    old = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=argon2.Type.I).hash("pw")
    assert hasher.verify(old, "pw")
    assert hasher.needs_rehash(old)


async def test_async_hash_and_verify_run_off_the_event_loop_thread(hasher: PasswordHasher) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Spy(PasswordHasher):
        def hash(self, password: str) -> str:
            seen.append(threading.get_ident())
            return super().hash(password)

    spy = Spy(**FAST)
    hashed = await spy.hash_async("async password")
    assert seen
    assert seen[0] != loop_thread
    assert await hasher.verify_async(hashed, "async password")
    assert not await hasher.verify_async(hashed, "other password")


async def test_async_hashing_keeps_the_event_loop_responsive() -> None:
    hasher = PasswordHasher(time_cost=2, memory_cost=19456)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(hasher.hash_async("concurrent password") for _ in range(4)))
    task.cancel()
    # On the loop, hashing would block the ticker entirely; off it, the ticker keeps running.
    assert ticks > 4


async def test_async_bad_input_raises_before_reaching_a_thread(hasher: PasswordHasher) -> None:
    with pytest.raises(ValidationError):
        await hasher.hash_async("")
    with pytest.raises(ValidationError):
        await hasher.verify_async("", "password")


def test_repr_shows_parameters_only() -> None:
    assert repr(PasswordHasher()) == "PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)"
