"""TOTP (RFC 6238): published vectors, window, replay prevention under concurrency, URIs, bad input."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from mainspring.errors import ConfigError, ValidationError
from mainspring.security import MemoryTotpReplayStore, Totp, TotpAlgorithm, TotpReplayStore
from mainspring.testing import capture_logs

# RFC 6238 Appendix B: the seeds are ASCII digits of the hash's output length.
_SEEDS: dict[str, bytes] = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii")


def _totp(secret: str | None = None, **kwargs: Any) -> Totp:
    kwargs.setdefault("replay_store", MemoryTotpReplayStore())
    return Totp(secret or Totp.generate_secret(), **kwargs)


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), _VECTORS)
def test_rfc6238_appendix_b_vectors(at: int, sha1: str, sha256: str, sha512: str) -> None:
    expected: dict[TotpAlgorithm, str] = {"sha1": sha1, "sha256": sha256, "sha512": sha512}
    for algorithm, code in expected.items():
        totp = _totp(_b32(_SEEDS[algorithm]), algorithm=algorithm, digits=8)
        assert totp.code(at) == code, algorithm


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), _VECTORS)
async def test_rfc6238_vectors_verify(at: int, sha1: str, sha256: str, sha512: str) -> None:
    expected: dict[TotpAlgorithm, str] = {"sha1": sha1, "sha256": sha256, "sha512": sha512}
    for algorithm, code in expected.items():
        totp = _totp(_b32(_SEEDS[algorithm]), algorithm=algorithm, digits=8)
        assert await totp.verify(code, at=at), algorithm


def test_generated_secret_is_160_bit_base32() -> None:
    secret = Totp.generate_secret()
    assert len(secret) == 32
    assert len(base64.b32decode(secret)) == 20
    assert secret != Totp.generate_secret()


def test_six_digit_code_is_the_low_digits() -> None:
    totp = _totp(_b32(_SEEDS["sha1"]))
    assert totp.code(59) == "287082"


async def test_code_of_the_previous_and_next_step_is_accepted() -> None:
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    assert await _totp(secret).verify(_totp(secret).code(now - 30), at=now)
    assert await _totp(secret).verify(_totp(secret).code(now + 30), at=now)


async def test_code_two_steps_away_is_refused() -> None:
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    assert not await _totp(secret).verify(_totp(secret).code(now - 60), at=now)
    assert not await _totp(secret).verify(_totp(secret).code(now + 60), at=now)


async def test_window_zero_accepts_only_the_current_step() -> None:
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    assert not await _totp(secret, window=0).verify(_totp(secret).code(now - 30), at=now)
    assert await _totp(secret, window=0).verify(_totp(secret).code(now), at=now)


async def test_wrong_code_is_refused() -> None:
    totp = _totp()
    now = 1_700_000_000.0
    valid = {totp.code(now + d) for d in (-30, 0, 30)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    assert not await totp.verify(wrong, at=now)


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", "------"])
async def test_malformed_codes_are_refused(bad: str) -> None:
    assert not await _totp().verify(bad)


async def test_spaces_in_the_code_are_ignored() -> None:
    totp = _totp()
    code = totp.code(1_700_000_000)
    assert await totp.verify(f"{code[:3]} {code[3:]}", at=1_700_000_000)


async def test_non_str_code_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="must be a str"):
        await _totp().verify(123456)  # type: ignore[arg-type]


async def test_the_same_code_is_accepted_only_once() -> None:
    totp = _totp()
    now = 1_700_000_000.0
    code = totp.code(now)
    assert await totp.verify(code, at=now)
    with capture_logs() as logs:
        assert not await totp.verify(code, at=now)
    assert [r["event"] for r in logs] == ["totp_replay_rejected"]
    assert totp.secret not in repr(logs)


async def test_an_older_code_is_refused_after_a_newer_one_was_used() -> None:
    totp = _totp()
    now = 1_700_000_000.0
    assert await totp.verify(totp.code(now), at=now)
    assert not await totp.verify(totp.code(now - 30), at=now)
    assert await totp.verify(totp.code(now + 30), at=now + 30)


async def test_replay_is_tracked_per_secret_through_a_shared_store() -> None:
    store = MemoryTotpReplayStore()
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    code = Totp(secret, replay_store=store).code(now)
    # A new Totp object per request, as a web handler would make: the store remembers.
    assert await Totp(secret, replay_store=store).verify(code, at=now)
    assert not await Totp(secret, replay_store=store).verify(code, at=now)
    other = Totp(Totp.generate_secret(), replay_store=store)
    assert await other.verify(other.code(now), at=now)


async def test_concurrent_submissions_of_one_code_accept_exactly_one() -> None:
    store = MemoryTotpReplayStore()
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    code = Totp(secret, replay_store=store).code(now)

    async def attempt() -> bool:
        await asyncio.sleep(0)
        return await Totp(secret, replay_store=store).verify(code, at=now)

    results = await asyncio.gather(*(attempt() for _ in range(200)))
    assert results.count(True) == 1


async def test_concurrent_submissions_from_threads_accept_exactly_one() -> None:
    store = MemoryTotpReplayStore()
    secret = Totp.generate_secret()
    now = 1_700_000_000.0
    code = Totp(secret, replay_store=store).code(now)

    def attempt() -> bool:
        return asyncio.run(Totp(secret, replay_store=store).verify(code, at=now))

    results = await asyncio.gather(*(asyncio.to_thread(attempt) for _ in range(32)))
    assert results.count(True) == 1


async def test_memory_store_forgets_records_after_their_ttl() -> None:
    clock = [0.0]
    store = MemoryTotpReplayStore(clock=lambda: clock[0])
    assert await store.claim("k", 5, ttl=90)
    assert not await store.claim("k", 5, ttl=90)
    clock[0] = 91.0
    assert await store.claim("k", 5, ttl=90)


def test_memory_store_satisfies_the_protocol() -> None:
    assert isinstance(MemoryTotpReplayStore(), TotpReplayStore)


def test_provisioning_uri_has_the_key_uri_fields() -> None:
    totp = _totp(_b32(_SEEDS["sha256"]), algorithm="sha256", digits=8, period=60)
    uri = totp.provisioning_uri("alice@example.com", "Acme Shop")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert parts.path == "/Acme%20Shop:alice@example.com"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "secret": totp.secret,
        "issuer": "Acme Shop",
        "algorithm": "SHA256",
        "digits": "8",
        "period": "60",
    }


@pytest.mark.parametrize(
    ("account", "issuer"), [("a:b", "Acme"), ("alice", "Ac:me"), ("", "Acme"), ("x", " ")]
)
def test_provisioning_uri_refuses_colons_and_empty_names(account: str, issuer: str) -> None:
    with pytest.raises(ValidationError):
        _totp().provisioning_uri(account, issuer)


def test_secret_is_canonicalised_and_lowercase_or_spaced_input_accepted() -> None:
    secret = Totp.generate_secret()
    spaced = " ".join(secret[i : i + 4] for i in range(0, 32, 4)).lower()
    assert _totp(spaced).secret == secret
    assert _totp(spaced).code(0) == _totp(secret).code(0)


@pytest.mark.parametrize("bad", ["not base32!!", "18181818181818181818181818181818"])
def test_invalid_base32_secret_is_a_validation_error(bad: str) -> None:
    with pytest.raises(ValidationError, match="base32"):
        _totp(bad)


def test_short_secret_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="bits"):
        _totp(_b32(b"0123456789"))  # 80 bits


def test_non_str_secret_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        Totp(b"bytes", replay_store=MemoryTotpReplayStore())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"digits": 5}, "digits"),
        ({"digits": 11}, "digits"),
        ({"period": 0}, "period"),
        ({"algorithm": "md5"}, "algorithm"),
        ({"window": -1}, "window"),
        ({"replay_store": object()}, "replay_store"),
    ],
)
def test_invalid_settings_are_a_config_error(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        _totp(**kwargs)
    assert [p.path for p in info.value.problems] == [path]


def test_repr_never_shows_the_secret() -> None:
    totp = _totp()
    assert totp.secret not in repr(totp)


async def test_clock_is_used_when_no_time_is_given() -> None:
    totp = _totp(clock=lambda: 1_111_111_109.0)
    assert await totp.verify(totp.code(1_111_111_109))
