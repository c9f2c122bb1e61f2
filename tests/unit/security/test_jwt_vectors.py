"""Published test vectors: RFC 7515 A.1, RFC 7519 sections 3.1 and 6.1, RFC 8037 A.4."""

from __future__ import annotations

import pytest

from mainspring.errors import AuthenticationError
from mainspring.security import JwtKey, KeyRing, TokenService, verify_jws
from mainspring.security._jose import b64url_decode

# RFC 7515 appendix A.1.1: the HMAC key as a JWK.
RFC7515_A1_JWK = {
    "kty": "oct",
    "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
}
# RFC 7515 A.1 and RFC 7519 section 3.1 publish the same HS256 JWT.
RFC7515_A1_TOKEN = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
# RFC 7519 section 6.1: the example unsecured JWT (alg "none"), which must never be accepted.
RFC7519_6_1_TOKEN = (
    "eyJhbGciOiJub25lIn0"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
)
# RFC 8037 appendix A.1 (key), A.3 (thumbprint) and A.4 (signature over a non-JSON payload).
RFC8037_A1_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
RFC8037_A3_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_A4_TOKEN = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def hs256_service() -> TokenService:
    key = JwtKey.from_jwk({**RFC7515_A1_JWK, "kid": "rfc7515"}, algorithm="HS256")
    return TokenService(KeyRing(key), issuer="joe", audience="unused")


def test_rfc7515_a1_and_rfc7519_section_3_1_hs256_example_verifies() -> None:
    verified = hs256_service().verify_signature_only(RFC7515_A1_TOKEN)
    assert verified.claims == {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}
    assert verified.header == {"typ": "JWT", "alg": "HS256"}


def test_rfc7515_a1_token_fails_full_verification_because_it_expired_in_2011() -> None:
    with pytest.raises(AuthenticationError) as info:
        hs256_service().verify(RFC7515_A1_TOKEN)
    assert info.value.details["reason"] == "missing_iat"  # the default required claims come first
    key = JwtKey.from_jwk({**RFC7515_A1_JWK, "kid": "rfc7515"}, algorithm="HS256")
    lenient = TokenService(KeyRing(key), issuer="joe", audience="unused", required=("exp",))
    with pytest.raises(AuthenticationError, match=r"expired \d+ s ago \(leeway 30 s\)") as info:
        lenient.verify(RFC7515_A1_TOKEN)
    assert info.value.details["reason"] == "expired"


def test_rfc7515_a1_with_one_flipped_signature_byte_is_rejected() -> None:
    h, p, s = RFC7515_A1_TOKEN.split(".")
    flipped = s[:-2] + ("Xk" if s[-2:] != "Xk" else "Yk")
    with pytest.raises(AuthenticationError, match="signature does not match"):
        hs256_service().verify_signature_only(f"{h}.{p}.{flipped}")


def test_rfc7519_section_6_1_unsecured_jwt_is_rejected() -> None:
    svc = hs256_service()
    for check in (svc.verify, svc.verify_signature_only):
        with pytest.raises(AuthenticationError) as info:
            check(RFC7519_6_1_TOKEN)
        assert info.value.details["reason"] == "alg_none"


def test_rfc8037_a3_thumbprint_is_the_default_kid() -> None:
    key = JwtKey.from_jwk(RFC8037_A1_JWK, algorithm="EdDSA")
    assert key.thumbprint() == RFC8037_A3_THUMBPRINT
    assert key.kid == RFC8037_A3_THUMBPRINT


def test_rfc8037_a4_ed25519_signature_verifies_with_the_public_key() -> None:
    public = JwtKey.from_jwk({k: v for k, v in RFC8037_A1_JWK.items() if k != "d"}, algorithm="EdDSA")
    header, payload, key = verify_jws(RFC8037_A4_TOKEN, KeyRing(None, [public]))
    assert header == {"alg": "EdDSA"}
    assert b64url_decode(payload, "payload") == b"Example of Ed25519 signing"
    assert key is public


def test_rfc8037_a4_signature_is_reproduced_by_signing() -> None:
    key = JwtKey.from_jwk(RFC8037_A1_JWK, algorithm="EdDSA")
    signing_input, _, signature = RFC8037_A4_TOKEN.rpartition(".")
    assert key.sign(signing_input.encode()) == b64url_decode(signature, "signature")
