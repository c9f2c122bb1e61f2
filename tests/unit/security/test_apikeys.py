"""API keys: format, hashing at rest, and each rejection with its own message."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from mainspring.errors import AuthenticationError, NotFoundError, ValidationError
from mainspring.security._apikeys import ApiKeyService, ApiKeyStore, MemoryApiKeyStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryApiKeyStore:
    return MemoryApiKeyStore()


@pytest.fixture
def service(store: MemoryApiKeyStore, clock: FakeClock) -> ApiKeyService:
    return ApiKeyService(store, clock=clock)


def test_memory_store_satisfies_the_protocol(store: MemoryApiKeyStore) -> None:
    assert isinstance(store, ApiKeyStore)


async def test_issued_key_has_the_documented_form_and_verifies(service: ApiKeyService) -> None:
    issued = await service.issue("svc-billing", scopes=["orders:read"], name="ci")
    match = re.fullmatch(r"msk_([a-z0-9]{8,12})_([A-Za-z0-9_-]+)", issued.key)
    assert match is not None
    assert match.group(1) == issued.prefix
    assert len(match.group(2)) >= 43  # 32 random bytes, base64url
    record = await service.verify(issued.key)
    assert record.owner == "svc-billing"
    assert record.scopes == ("orders:read",)
    assert record.name == "ci"


async def test_store_keeps_only_the_sha256_of_the_secret(
    service: ApiKeyService, store: MemoryApiKeyStore
) -> None:
    issued = await service.issue("u1")
    secret = issued.key.split("_", 2)[2]
    record = await store.get(issued.prefix)
    assert record is not None
    assert record.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(record)
    assert secret not in repr(issued)


async def test_two_keys_get_different_prefixes_and_secrets(service: ApiKeyService) -> None:
    a, b = await service.issue("u1"), await service.issue("u1")
    assert a.prefix != b.prefix
    assert a.key != b.key


async def test_verify_records_last_use(
    service: ApiKeyService, store: MemoryApiKeyStore, clock: FakeClock
) -> None:
    issued = await service.issue("u1")
    assert issued.record.last_used_at is None
    clock.now += 60
    await service.verify(issued.key)
    record = await store.get(issued.prefix)
    assert record is not None
    assert record.last_used_at == clock.now


@pytest.mark.parametrize(
    "bad",
    ["", "msk_", "abc", "msk_ABCDEFGH_" + "a" * 43, "msk_abc_" + "a" * 43, "sk_abcdefgh_" + "a" * 43,
     "msk_abcdefgh_short", "msk_abcdefgh_" + "a" * 43 + "!"],
)  # fmt: skip
async def test_malformed_key_is_rejected_without_echoing_it(service: ApiKeyService, bad: str) -> None:
    with pytest.raises(AuthenticationError, match="malformed") as info:
        await service.verify(bad)
    if len(bad) > 5:
        assert bad not in str(info.value)


async def test_unknown_prefix_is_rejected(service: ApiKeyService) -> None:
    with pytest.raises(AuthenticationError, match="no key with prefix"):
        await service.verify("msk_abcdefgh_" + "a" * 43)


async def test_wrong_secret_is_rejected_without_echoing_it(service: ApiKeyService) -> None:
    issued = await service.issue("u1")
    forged = f"msk_{issued.prefix}_" + "b" * 43
    with pytest.raises(AuthenticationError, match="wrong secret") as info:
        await service.verify(forged)
    assert "b" * 43 not in str(info.value)
    assert issued.key.split("_", 2)[2] not in str(info.value)


async def test_expired_key_is_rejected(service: ApiKeyService, clock: FakeClock) -> None:
    issued = await service.issue("u1", expires_in=3600)
    clock.now += 3599
    await service.verify(issued.key)
    clock.now += 1
    with pytest.raises(AuthenticationError, match="expired"):
        await service.verify(issued.key)


async def test_revoked_key_is_rejected(service: ApiKeyService) -> None:
    issued = await service.issue("u1")
    await service.revoke(issued.prefix)
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.verify(issued.key)
    other = await service.issue("u1")
    assert (await service.verify(other.key)).owner == "u1"


async def test_revoking_an_unknown_prefix_is_not_found(service: ApiKeyService) -> None:
    with pytest.raises(NotFoundError):
        await service.revoke("nosuchkey")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"owner": ""}, "owner"), ({"owner": "u", "expires_in": 0}, "expires_in"),
     ({"owner": "u", "scopes": "orders:read"}, "scopes")],
)  # fmt: skip
async def test_bad_issue_arguments_are_validation_errors(
    service: ApiKeyService, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await service.issue(**kwargs)  # type: ignore[arg-type]


DOC = Path(__file__).parents[3] / "docs" / "security-keys.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))
EXPECTED = {
    "example_apikeys": ["True", "svc-billing ('orders:read',)", "was revoked"],
    "example_revocation": ["True False"],
    "example_refresh": ["user-42 True", "already used, so its session was revoked", "session was revoked"],
    "example_sql_stores": ["key of svc-billing", "refreshed user-42"],
}


def test_keys_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keys_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    for expected in EXPECTED[name]:
        assert any(expected in line for line in out.splitlines()), f"{expected!r} not in:\n{out}"
