"""Recovery codes: generation, hashed storage, one-time use (also under concurrency), bad input."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from mainspring.errors import ConfigError, ValidationError
from mainspring.security import MemoryRecoveryCodeStore, RecoveryCodes, RecoveryCodeStore

_FORMAT = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}(?:-[0-9A-HJKMNP-TV-Z]{4}){3}")


@pytest.fixture
def store() -> MemoryRecoveryCodeStore:
    return MemoryRecoveryCodeStore()


@pytest.fixture
def codes(store: MemoryRecoveryCodeStore) -> RecoveryCodes:
    return RecoveryCodes(store, count=10)


def test_generate_makes_count_distinct_well_formed_codes_and_hashes(codes: RecoveryCodes) -> None:
    plain, hashes = codes.generate()
    assert len(plain) == len(set(plain)) == 10
    assert all(_FORMAT.fullmatch(c) for c in plain)
    assert len(hashes) == 10
    for code, hashed in zip(plain, hashes, strict=True):
        assert code not in hashed
        assert code.replace("-", "") not in hashed
        assert hashed.startswith("sha256$")
        assert RecoveryCodes.matches(code, hashed)


def test_same_code_hashes_differently_with_per_code_salt() -> None:
    code = "ABCD-EFGH-JKMN-PQRS"
    first, second = RecoveryCodes.hash_code(code), RecoveryCodes.hash_code(code)
    assert first != second
    assert RecoveryCodes.matches(code, first)
    assert RecoveryCodes.matches(code, second)


async def test_issue_stores_only_hashes(codes: RecoveryCodes, store: MemoryRecoveryCodeStore) -> None:
    plain = await codes.issue("u-1")
    stored = await store.hashes("u-1")
    assert len(stored) == 10
    assert not set(plain) & set(stored)
    assert await codes.remaining("u-1") == 10


async def test_a_code_works_once(codes: RecoveryCodes) -> None:
    plain = await codes.issue("u-1")
    assert await codes.verify_and_consume("u-1", plain[3])
    assert not await codes.verify_and_consume("u-1", plain[3])
    assert await codes.remaining("u-1") == 9
    assert await codes.verify_and_consume("u-1", plain[4])


async def test_codes_belong_to_their_user(codes: RecoveryCodes) -> None:
    plain = await codes.issue("u-1")
    await codes.issue("u-2")
    assert not await codes.verify_and_consume("u-2", plain[0])
    assert not await codes.verify_and_consume("nobody", plain[0])


async def test_reissuing_invalidates_the_old_codes(codes: RecoveryCodes) -> None:
    old = await codes.issue("u-1")
    new = await codes.issue("u-1")
    assert not await codes.verify_and_consume("u-1", old[0])
    assert await codes.verify_and_consume("u-1", new[0])


async def test_case_dashes_spaces_and_confusable_letters_are_forgiven(codes: RecoveryCodes) -> None:
    plain = await codes.issue("u-1")
    code = plain[0]
    typed = code.replace("-", " ").lower().replace("0", "o").replace("1", "l")
    assert await codes.verify_and_consume("u-1", typed)


@pytest.mark.parametrize(
    "bad", ["", "short", "ABCD-EFGH-JKMN-PQR", "ABCD-EFGH-JKMN-PQRSX", "ABCD-EFGH-JKMN-PQR!"]
)
async def test_malformed_code_is_refused(codes: RecoveryCodes, bad: str) -> None:
    await codes.issue("u-1")
    assert not await codes.verify_and_consume("u-1", bad)
    assert await codes.remaining("u-1") == 10


async def test_non_str_code_is_a_validation_error(codes: RecoveryCodes) -> None:
    with pytest.raises(ValidationError):
        await codes.verify_and_consume("u-1", None)  # type: ignore[arg-type]


def test_hash_code_refuses_a_malformed_code() -> None:
    with pytest.raises(ValidationError, match="not a recovery code"):
        RecoveryCodes.hash_code("nope")


@pytest.mark.parametrize("stored", ["", "md5$00$abc", "sha256$zz$abc", "sha256$0011"])
def test_matches_is_false_for_malformed_stored_hashes(stored: str) -> None:
    assert not RecoveryCodes.matches("ABCD-EFGH-JKMN-PQRS", stored)


async def test_concurrent_use_of_one_code_succeeds_exactly_once(codes: RecoveryCodes) -> None:
    plain = await codes.issue("u-1")

    async def attempt() -> bool:
        await asyncio.sleep(0)
        return await codes.verify_and_consume("u-1", plain[0])

    results = await asyncio.gather(*(attempt() for _ in range(100)))
    assert results.count(True) == 1
    assert await codes.remaining("u-1") == 9


async def test_concurrent_use_from_threads_succeeds_exactly_once(codes: RecoveryCodes) -> None:
    plain = await codes.issue("u-1")

    def attempt() -> bool:
        return asyncio.run(codes.verify_and_consume("u-1", plain[1]))

    results = await asyncio.gather(*(asyncio.to_thread(attempt) for _ in range(32)))
    assert results.count(True) == 1


@pytest.mark.parametrize("count", [0, 101, True, "10"])
def test_invalid_count_is_a_config_error(store: MemoryRecoveryCodeStore, count: Any) -> None:
    with pytest.raises(ConfigError):
        RecoveryCodes(store, count=count)


def test_store_must_implement_the_protocol() -> None:
    with pytest.raises(ConfigError):
        RecoveryCodes(object())  # type: ignore[arg-type]
    assert isinstance(MemoryRecoveryCodeStore(), RecoveryCodeStore)
