"""TokenService with a revocation list: verify_async refuses revoked jtis; sync verify refuses to skip it."""

from __future__ import annotations

import pytest

from mainspring.errors import AuthenticationError, ConfigError, ServiceUnavailableError
from mainspring.security import JwtKey, KeyRing, MemoryRevocationList, RedisRevocationList, TokenService
from mainspring.security._jose import b64url_encode, encode_json

NOW = 1_800_000_000.0


class CountingList(MemoryRevocationList):
    """A memory list that counts lookups, to show which tokens reach the revocation check."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: NOW)
        self.lookups = 0

    async def is_revoked(self, jti: str) -> bool:
        self.lookups += 1
        return await super().is_revoked(jti)


def service(revocation: object = None, **options: object) -> TokenService:
    ring = KeyRing(JwtKey.generate("HS256", kid="k1"))
    return TokenService(
        ring, issuer="iss", audience="aud", clock=lambda: NOW, revocation=revocation, **options
    )  # type: ignore[arg-type]


async def test_revoked_token_is_rejected_with_its_own_reason_and_others_pass() -> None:
    revoked = CountingList()
    tokens = service(revoked)
    kept, dropped = tokens.issue("user-1"), tokens.issue("user-1")
    victim = await tokens.verify_async(dropped)
    assert victim.jti is not None
    assert victim.expires_at is not None
    await revoked.revoke(victim.jti, victim.expires_at)

    with pytest.raises(AuthenticationError, match=r"^JWT rejected: token has been revoked$") as caught:
        await tokens.verify_async(dropped)

    assert caught.value.details == {"reason": "revoked"}
    assert caught.value.code == "invalid_token"
    assert (await tokens.verify_async(kept)).subject == "user-1"


async def test_invalid_tokens_are_rejected_before_the_revocation_lookup() -> None:
    revoked = CountingList()
    tokens = service(revoked)
    expired = tokens.issue("user-1", ttl=1)
    later = TokenService(
        tokens.ring, issuer="iss", audience="aud", clock=lambda: NOW + 60, revocation=revoked
    )

    with pytest.raises(AuthenticationError, match="expired"):
        await later.verify_async(expired)
    with pytest.raises(AuthenticationError, match=r"malformed|not three|JWT rejected"):
        await tokens.verify_async("not-a-token")
    assert revoked.lookups == 0


async def test_sync_verify_refuses_to_skip_a_configured_revocation_list() -> None:
    tokens = service(MemoryRevocationList())
    token = tokens.issue("user-1")

    with pytest.raises(ConfigError, match="use `await verify_async"):
        tokens.verify(token)
    assert (await tokens.verify_async(token)).subject == "user-1"


async def test_without_a_revocation_list_verify_and_verify_async_agree() -> None:
    tokens = service()
    token = tokens.issue("user-1")
    assert tokens.revocation is None
    assert (await tokens.verify_async(token)).claims == tokens.verify(token).claims


async def test_a_token_without_jti_cannot_be_checked_and_is_refused() -> None:
    issuer = service()
    verifier = TokenService(
        issuer.ring,
        issuer="iss",
        audience="aud",
        clock=lambda: NOW,
        required=("exp", "sub"),
        revocation=MemoryRevocationList(),
    )
    # A token of another issuer that leaves jti out.
    key = issuer.ring.signing_key
    assert key is not None
    header = encode_json({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = encode_json({"sub": "user-1", "exp": NOW + 60, "iss": "iss", "aud": "aud"})
    token = f"{header}.{body}.{b64url_encode(key.sign(f'{header}.{body}'.encode()))}"

    with pytest.raises(AuthenticationError, match="no 'jti'") as caught:
        await verifier.verify_async(token)
    assert caught.value.details == {"reason": "missing_jti"}


async def test_an_unreachable_revocation_list_fails_closed() -> None:
    tokens = service(RedisRevocationList("redis://127.0.0.1:1/0"))  # never started
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await tokens.verify_async(tokens.issue("user-1"))


def test_a_revocation_argument_that_is_not_a_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid TokenService settings") as caught:
        service(revocation={"jti": True})
    assert caught.value.problems[0].path == "revocation"
