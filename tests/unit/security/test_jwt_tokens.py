"""TokenService: issuing, verifying, rotation and every rejection rule, each with its own test."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.errors import AuthenticationError, ValidationError
from mainspring.security import MAX_TOKEN_BYTES, JwtAlgorithm, JwtKey, KeyRing, TokenService

NOW = 1_800_000_000.0
ISS = "https://auth.example.test"
AUD = "orders-api"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any] | bytes, key: JwtKey | None = None) -> str:
    """Build a compact JWS by hand, signed with ``key`` when given (empty signature otherwise)."""
    body = claims if isinstance(claims, bytes) else orjson.dumps(claims)
    signing_input = f"{b64(orjson.dumps(header))}.{b64(body)}"
    sig = b64(key.sign(signing_input.encode())) if key is not None else ""
    return f"{signing_input}.{sig}"


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "jti": "j-1",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def service(ring: KeyRing, **kwargs: Any) -> TokenService:
    return TokenService(ring, issuer=ISS, audience=AUD, clock=lambda: NOW, **kwargs)


@pytest.fixture(scope="module")
def ed_key() -> JwtKey:
    return JwtKey.generate("EdDSA", kid="ed-1")


@pytest.fixture(scope="module")
def rsa_key() -> JwtKey:
    return JwtKey.generate("RS256", kid="rsa-1")


@pytest.fixture
def svc(ed_key: JwtKey) -> TokenService:
    return service(KeyRing(ed_key))


def reason_of(svc: TokenService, token: str | bytes) -> tuple[str, str]:
    with pytest.raises(AuthenticationError) as info:
        svc.verify(token)
    assert info.value.code == "invalid_token"
    assert info.value.http_status == 401
    return info.value.details["reason"], info.value.message


# -- happy paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256", "HS256"])
def test_issued_token_verifies_with_every_algorithm(algorithm: JwtAlgorithm) -> None:
    key = JwtKey.generate(algorithm, kid=f"k-{algorithm}")
    svc = service(KeyRing(key))
    token = svc.issue("user-7", claims={"scope": "orders:read"})
    verified = svc.verify(token)
    assert verified.subject == "user-7"
    assert verified.claims["scope"] == "orders:read"
    assert verified.claims["iss"] == ISS
    assert verified.claims["aud"] == AUD
    assert verified.expires_at == NOW + 900
    assert verified.kid == f"k-{algorithm}"
    assert verified.algorithm == algorithm
    assert verified.header["typ"] == "JWT"


def test_each_issued_token_has_a_fresh_jti(svc: TokenService) -> None:
    first, second = svc.verify(svc.issue("u")), svc.verify(svc.issue("u"))
    assert first.jti
    assert second.jti
    assert first.jti != second.jti


def test_issue_refuses_to_override_registered_claims(svc: TokenService) -> None:
    with pytest.raises(ValidationError, match="exp"):
        svc.issue("u", claims={"exp": 1})


def test_verify_only_ring_cannot_issue(ed_key: JwtKey) -> None:
    svc = service(KeyRing(None, [ed_key.public()]))
    with pytest.raises(ValidationError, match="no signing key"):
        svc.issue("u")


def test_audience_list_containing_ours_is_accepted(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(aud=["billing", AUD]), ed_key)
    assert svc.verify(token).subject == "user-1"


def test_expired_token_within_leeway_is_accepted(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(exp=int(NOW) - 20), ed_key)
    assert svc.verify(token).subject == "user-1"


def test_bytes_token_is_accepted(svc: TokenService) -> None:
    assert svc.verify(svc.issue("u").encode()).subject == "u"


def test_ed25519_fully_specified_alg_name_is_accepted(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "Ed25519", "kid": "ed-1"}, good_claims(), ed_key)
    assert svc.verify(token).algorithm == "Ed25519"


# -- rotation ---------------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(ed_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key))
    old_token = svc.issue("u")
    new_key = JwtKey.generate("ES256", kid="ec-2")
    svc.use_ring(svc.ring.rotate(new_key))
    new_token = svc.issue("u")
    assert svc.verify(new_token).kid == "ec-2"
    assert svc.verify(old_token).kid == "ed-1"
    svc.use_ring(svc.ring.retire("ed-1"))
    assert reason_of(svc, old_token)[0] == "kid_unknown"
    assert svc.verify(new_token).kid == "ec-2"


def test_tokens_signed_elsewhere_verify_against_the_published_public_key(ed_key: JwtKey) -> None:
    issuer = service(KeyRing(ed_key))
    public = JwtKey.from_jwk(issuer.jwks()["keys"][0])
    verifier = service(KeyRing(None, [public]))
    assert verifier.verify(issuer.issue("u")).subject == "u"


# -- rejections: header -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(svc: TokenService, alg: str) -> None:
    reason, message = reason_of(svc, forge({"alg": alg, "kid": "ed-1"}, good_claims()))
    assert reason == "alg_none"
    assert "'none'" in message


def test_hs256_token_signed_with_the_rsa_public_key_is_rejected_as_algorithm_confusion(
    rsa_key: JwtKey,
) -> None:
    svc = service(KeyRing(rsa_key))
    # The classic attack: use the published public key bytes as the HMAC secret.
    pem = rsa_key.public_pem()
    hmac_with_public = JwtKey.hmac(pem, kid="rsa-1")
    token = forge({"alg": "HS256", "kid": "rsa-1"}, good_claims(), hmac_with_public)
    reason, message = reason_of(svc, token)
    assert reason == "alg_confusion"
    assert "public key" in message


def test_hs256_token_against_an_ec_key_is_rejected_as_algorithm_confusion() -> None:
    ec_key = JwtKey.generate("ES256", kid="ec-1")
    svc = service(KeyRing(ec_key))
    der = ec_key.public_pem().replace(b"\n", b"")
    token = forge({"alg": "HS256", "kid": "ec-1"}, good_claims(), JwtKey.hmac(der, kid="x"))
    assert reason_of(svc, token)[0] == "alg_confusion"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "HS512x"])
def test_algorithm_not_allowed_for_the_key_is_rejected(ed_key: JwtKey, svc: TokenService, alg: str) -> None:
    token = forge({"alg": alg, "kid": "ed-1"}, good_claims(), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "alg_not_allowed"
    assert "accepts only EdDSA" in message


def test_hs256_key_refuses_other_algorithms() -> None:
    key = JwtKey.generate("HS256", kid="h")
    svc = service(KeyRing(key))
    token = forge({"alg": "EdDSA", "kid": "h"}, good_claims(), key)
    assert reason_of(svc, token)[0] == "alg_not_allowed"


def test_missing_alg_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    assert reason_of(svc, forge({"kid": "ed-1"}, good_claims(), ed_key))[0] == "malformed"


def test_unknown_kid_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    reason, message = reason_of(svc, forge({"alg": "EdDSA", "kid": "nope"}, good_claims(), ed_key))
    assert reason == "kid_unknown"
    assert "'nope' is not in the key ring" in message


def test_missing_kid_is_rejected_when_the_ring_has_several_keys(ed_key: JwtKey, rsa_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key, [rsa_key]))
    assert reason_of(svc, forge({"alg": "EdDSA"}, good_claims(), ed_key))[0] == "kid_missing"


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
def test_key_pointing_headers_are_rejected_and_never_followed(
    ed_key: JwtKey, svc: TokenService, name: str
) -> None:
    value: Any = {"kty": "OKP"} if name == "jwk" else "https://attacker.test/keys"
    token = forge({"alg": "EdDSA", "kid": "ed-1", name: value}, good_claims(), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "key_header"
    assert repr(name) in message
    assert "attacker" not in message


def test_unknown_crit_header_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1", "crit": ["exp2"], "exp2": 1}, good_claims(), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "crit"
    assert "exp2" in message


def test_understood_crit_header_is_accepted(ed_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key), understood_crit=("b64x",))
    token = forge({"alg": "EdDSA", "kid": "ed-1", "crit": ["b64x"], "b64x": True}, good_claims(), ed_key)
    assert svc.verify(token).subject == "user-1"


@pytest.mark.parametrize("crit", [[], "exp", [1]])
def test_malformed_crit_header_is_rejected(ed_key: JwtKey, svc: TokenService, crit: Any) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1", "crit": crit}, good_claims(), ed_key)
    assert reason_of(svc, token)[0] == "malformed"


# -- rejections: shape and size ---------------------------------------------------------------------


def test_token_over_8_kib_is_rejected_without_echoing_it(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(pad="A" * MAX_TOKEN_BYTES), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "too_large"
    assert "8192" in message
    assert token[:20] not in message


def test_oversized_bytes_token_is_rejected_before_decoding(svc: TokenService) -> None:
    assert reason_of(svc, b"\xff" * (MAX_TOKEN_BYTES + 1))[0] == "too_large"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJFZERTQSJ9.e30.sig+nature",
        "eyJhbGciOiJFZERTQSJ9.e30=.sig",
        "eyJhbGciOiJFZERTQSJ9 .e30.sig",
        "a.b.c.d.e",
    ],
)
def test_malformed_compact_serialization_is_rejected(svc: TokenService, token: str) -> None:
    reason, message = reason_of(svc, token)
    assert reason == "malformed"
    if token:
        assert token not in message


def test_jwe_shaped_token_gets_its_own_message(svc: TokenService) -> None:
    assert "JWE" in reason_of(svc, "a.b.c.d.e")[1]


def test_header_with_impossible_base64_length_is_rejected(svc: TokenService) -> None:
    reason, message = reason_of(svc, "eyJhbGciOiJFZERTQSJ9x.e30.c2ln")
    assert (reason, "base64url" in message) == ("malformed", True)


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b'"alg"', b"\xff\xfe"])
def test_header_that_is_not_a_json_object_is_rejected(svc: TokenService, header: bytes) -> None:
    reason, message = reason_of(svc, f"{b64(header)}.e30.c2ln")
    assert reason == "malformed"
    assert "header" in message


def test_claims_that_are_not_json_are_rejected_after_the_signature(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, b"{not json", ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "malformed"
    assert "claims set" in message


def test_non_ascii_bytes_token_is_rejected(svc: TokenService) -> None:
    assert reason_of(svc, "é.e30.c2ln".encode())[0] == "malformed"


def test_non_string_token_is_rejected(svc: TokenService) -> None:
    assert reason_of(svc, 12345)[0] == "malformed"  # type: ignore[arg-type]


# -- rejections: signature --------------------------------------------------------------------------


def test_wrong_signature_is_rejected(svc: TokenService) -> None:
    other = JwtKey.generate("EdDSA", kid="ed-1")
    reason, _ = reason_of(svc, forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(), other))
    assert reason == "bad_signature"


def test_tampered_claims_are_rejected(svc: TokenService) -> None:
    h, _, s = svc.issue("user-1").split(".")
    tampered = f"{h}.{b64(orjson.dumps(good_claims(sub='admin')))}.{s}"
    assert reason_of(svc, tampered)[0] == "bad_signature"


def test_empty_signature_is_rejected(svc: TokenService) -> None:
    h, p, _ = svc.issue("user-1").split(".")
    assert reason_of(svc, f"{h}.{p}.")[0] == "bad_signature"


def test_es256_der_signature_is_rejected() -> None:
    key = JwtKey.generate("ES256", kid="ec")
    svc = service(KeyRing(key))
    h, p, s = svc.issue("u").split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    assert len(raw) == 64
    assert reason_of(svc, f"{h}.{p}.{b64(raw + b'x')}")[0] == "bad_signature"


# -- rejections: claims -----------------------------------------------------------------------------


def test_expired_token_is_rejected_with_age_and_leeway_in_message(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(exp=int(NOW) - 42), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "expired"
    assert "expired 42 s ago (leeway 30 s)" in message


@pytest.mark.parametrize("name", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_each_missing_required_claim_is_rejected(ed_key: JwtKey, svc: TokenService, name: str) -> None:
    claims = good_claims()
    del claims[name]
    reason, message = reason_of(svc, forge({"alg": "EdDSA", "kid": "ed-1"}, claims, ed_key))
    assert reason == f"missing_{name}"
    assert repr(name) in message


def test_nbf_in_the_future_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(nbf=int(NOW) + 100), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "not_yet_valid"
    assert "100 s" in message


def test_nbf_within_leeway_is_accepted(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(nbf=int(NOW) + 10), ed_key)
    assert svc.verify(token).subject == "user-1"


def test_iat_in_the_future_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(iat=int(NOW) + 3600), ed_key)
    assert reason_of(svc, token)[0] == "iat_future"


@pytest.mark.parametrize("aud", ["billing", ["billing", "reports"], []])
def test_wrong_audience_is_rejected(ed_key: JwtKey, svc: TokenService, aud: Any) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(aud=aud), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "wrong_audience"
    assert "billing" not in message


def test_wrong_issuer_is_rejected(ed_key: JwtKey, svc: TokenService) -> None:
    token = forge({"alg": "EdDSA", "kid": "ed-1"}, good_claims(iss="https://evil.test"), ed_key)
    reason, message = reason_of(svc, token)
    assert reason == "wrong_issuer"
    assert "evil" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "soon"},
        {"exp": True},
        {"nbf": "x"},
        {"iat": None, "iat_": 1},
        {"aud": 5},
        {"sub": 5},
        {"jti": []},
    ],
)
def test_claims_of_the_wrong_type_are_rejected(ed_key: JwtKey, overrides: dict[str, Any]) -> None:
    svc = service(KeyRing(ed_key), required=("exp",))
    claims = good_claims(**overrides)
    if "iat_" in claims:
        claims["iat"] = "yesterday"
    reason, _ = reason_of(svc, forge({"alg": "EdDSA", "kid": "ed-1"}, claims, ed_key))
    assert reason == "malformed"


def test_signature_only_check_skips_claims_but_not_the_signature(ed_key: JwtKey, svc: TokenService) -> None:
    expired = forge({"alg": "EdDSA", "kid": "ed-1"}, {"exp": 1}, ed_key)
    assert svc.verify_signature_only(expired).claims == {"exp": 1}
    with pytest.raises(AuthenticationError):
        svc.verify(expired)
    forged = forge({"alg": "EdDSA", "kid": "ed-1"}, {"exp": 1}, JwtKey.generate("EdDSA", kid="ed-1"))
    with pytest.raises(AuthenticationError):
        svc.verify_signature_only(forged)


def test_service_rejects_bad_settings(ed_key: JwtKey) -> None:
    with pytest.raises(ValidationError, match="leeway"):
        service(KeyRing(ed_key), leeway=-1)
    with pytest.raises(ValidationError, match="access_ttl"):
        service(KeyRing(ed_key), access_ttl=0)


# -- parser robustness ------------------------------------------------------------------------------

_FUZZ_SERVICE = service(KeyRing(JwtKey.generate("EdDSA", kid="fuzz")))


@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_authentication_error(text: str) -> None:
    with pytest.raises(AuthenticationError):
        _FUZZ_SERVICE.verify(text)


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=80))
def test_arbitrary_parts_only_ever_raise_authentication_error(h: bytes, p: bytes, s: bytes) -> None:
    with pytest.raises(AuthenticationError):
        _FUZZ_SERVICE.verify(f"{b64(h)}.{b64(p)}.{b64(s)}")


# -- the verification cache ---------------------------------------------------------------------------


def test_a_token_seen_before_is_not_verified_again(ed_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key))
    token = svc.issue("user-1")
    assert svc.verify(token) is svc.verify(token)
    uncached = service(KeyRing(ed_key), verify_cache_size=0)
    assert uncached.verify(token) is not uncached.verify(token)


def test_a_cached_token_is_rejected_once_it_expires() -> None:
    key = JwtKey.generate("HS256", kid="hs-1")
    now = [NOW]
    svc = TokenService(KeyRing(key), issuer=ISS, audience=AUD, leeway=0, clock=lambda: now[0])
    token = svc.issue("user-1", ttl=60)
    assert svc.verify(token).subject == "user-1"
    now[0] += 61
    with pytest.raises(AuthenticationError) as caught:
        svc.verify(token)
    assert caught.value.details["reason"] == "expired"


def test_a_cached_token_is_rejected_after_its_key_leaves_the_ring(ed_key: JwtKey, rsa_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key))
    token = svc.issue("user-1")
    svc.verify(token)
    svc.use_ring(KeyRing(rsa_key))
    with pytest.raises(AuthenticationError) as caught:
        svc.verify(token)
    assert caught.value.details["reason"] == "kid_unknown"


def test_a_full_cache_starts_again_and_keeps_verifying(ed_key: JwtKey) -> None:
    svc = service(KeyRing(ed_key), verify_cache_size=2)
    tokens = [svc.issue(f"user-{i}") for i in range(5)]
    assert [svc.verify(t).subject for t in tokens * 2] == [f"user-{i}" for i in range(5)] * 2


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_a_bad_verify_cache_size_is_refused(ed_key: JwtKey, size: Any) -> None:
    with pytest.raises(ValidationError, match="verify_cache_size"):
        service(KeyRing(ed_key), verify_cache_size=size)
