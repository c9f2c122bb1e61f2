"""JwtKey loading and KeyRing rules, the JWKS document, and interoperability with PyJWT."""

from __future__ import annotations

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mainspring.errors import ConfigError
from mainspring.security import JWT_ALGORITHMS, JwtAlgorithm, JwtKey, KeyRing, TokenService

ASYMMETRIC: tuple[JwtAlgorithm, ...] = ("EdDSA", "ES256", "RS256")


@pytest.fixture(scope="module")
def keys() -> dict[str, JwtKey]:
    return {alg: JwtKey.generate(alg, kid=f"k-{alg}") for alg in JWT_ALGORITHMS}


def test_jwks_lists_public_keys_only_and_never_hs256_secrets(keys: dict[str, JwtKey]) -> None:
    ring = KeyRing(keys["EdDSA"], [keys["ES256"], keys["RS256"], keys["HS256"]])
    doc = ring.jwks()
    assert [k["kid"] for k in doc["keys"]] == ["k-EdDSA", "k-ES256", "k-RS256"]
    for jwk in doc["keys"]:
        assert jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
    assert {k["kty"] for k in doc["keys"]} == {"OKP", "EC", "RSA"}


def test_hs256_key_has_no_public_form(keys: dict[str, JwtKey]) -> None:
    with pytest.raises(ConfigError):
        keys["HS256"].public_jwk()
    with pytest.raises(ConfigError):
        keys["HS256"].public_pem()


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_public_jwk_round_trips_and_verifies(keys: dict[str, JwtKey], alg: JwtAlgorithm) -> None:
    loaded = JwtKey.from_jwk(keys[alg].public_jwk())
    assert loaded.kid == keys[alg].kid
    assert not loaded.can_sign
    sig = keys[alg].sign(b"a.b")
    assert loaded.verify(b"a.b", sig)
    assert not loaded.verify(b"a.c", sig)


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_private_pem_loads_a_signing_key(keys: dict[str, JwtKey], alg: JwtAlgorithm) -> None:
    private = keys[alg].signing_material
    assert private is not None
    assert not isinstance(private, bytes)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    loaded = JwtKey.from_pem(pem, algorithm=alg)
    assert loaded.can_sign
    assert loaded.kid == keys[alg].thumbprint()
    assert keys[alg].verify(b"x.y", loaded.sign(b"x.y"))


def test_rsa_private_jwk_without_primes_is_completed() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = private.private_numbers()
    as_b64 = JwtKey.from_key(private, algorithm="RS256", kid="r").public_jwk()
    from mainspring.security._jose import b64url_encode

    d = b64url_encode(n.d.to_bytes((n.d.bit_length() + 7) // 8, "big"))
    loaded = JwtKey.from_jwk({**as_b64, "d": d})
    assert loaded.can_sign
    assert loaded.verify(b"m", private.sign(b"m", *_pkcs1()))


def _pkcs1() -> tuple[object, object]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15(), hashes.SHA256()


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: JwtKey.hmac(b"short", kid="h"), "at least 32"),
        (lambda: JwtKey.from_key(rsa.generate_private_key(65537, 1024), algorithm="RS256"), "2048"),
        (lambda: JwtKey.from_key(ec.generate_private_key(ec.SECP384R1()), algorithm="ES256"), "P-256"),
        (lambda: JwtKey.generate("EdDSA").public().public_jwk() and JwtKey.from_jwk({"kty": "OKP"}), "alg"),
        (lambda: JwtKey.from_jwk({"kty": "oct", "k": "!!"}, algorithm="HS256"), "base64url"),
        (
            lambda: JwtKey.from_jwk({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, algorithm="ES256"),
            "curve",
        ),
        (lambda: JwtKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": "AA"}, algorithm="EdDSA"), "Ed25519"),
        (lambda: JwtKey.from_jwk({"kty": "OKP", "alg": "ES256"}, algorithm="EdDSA"), "requested"),
        (lambda: JwtKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nxx\n", algorithm="EdDSA"), "PEM"),
        (
            lambda: JwtKey.from_jwk({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, algorithm="EdDSA"),
            "32 bytes",
        ),
        (lambda: JwtKey.generate("HS384"), "not supported"),  # type: ignore[arg-type]
    ],
)
def test_invalid_key_material_is_a_config_error_saying_why(build: object, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        build()  # type: ignore[operator]


def test_config_error_never_contains_the_secret() -> None:
    secret = b"s3cr3t-but-too-short"
    with pytest.raises(ConfigError) as info:
        JwtKey.hmac(secret, kid="h")
    assert secret.decode() not in info.value.message


def test_key_repr_shows_no_material(keys: dict[str, JwtKey]) -> None:
    assert repr(keys["HS256"]) == "JwtKey(kid='k-HS256', algorithm='HS256', secret)"


def test_ring_rejects_duplicate_kids_and_public_signing_keys(keys: dict[str, JwtKey]) -> None:
    twin = JwtKey.generate("EdDSA", kid="k-EdDSA")
    with pytest.raises(ConfigError, match="share this kid"):
        KeyRing(keys["EdDSA"], [twin])
    with pytest.raises(ConfigError, match="no private part"):
        KeyRing(keys["EdDSA"].public())
    with pytest.raises(ConfigError, match="at least one key"):
        KeyRing(None)


def test_ring_cannot_retire_its_signing_key_or_an_unknown_kid(keys: dict[str, JwtKey]) -> None:
    ring = KeyRing(keys["EdDSA"], [keys["ES256"]])
    with pytest.raises(ConfigError, match="rotate"):
        ring.retire("k-EdDSA")
    with pytest.raises(ConfigError, match="no key"):
        ring.retire("missing")
    assert [k.kid for k in ring.retire("k-ES256").keys] == ["k-EdDSA"]


def test_rotate_puts_the_new_key_first_and_keeps_the_rest(keys: dict[str, JwtKey]) -> None:
    ring = KeyRing(keys["EdDSA"]).rotate(keys["RS256"])
    assert ring.signing_key is keys["RS256"]
    assert [k.kid for k in ring.keys] == ["k-RS256", "k-EdDSA"]


# -- interoperability: the same tokens through PyJWT -------------------------------------------------


@pytest.mark.parametrize("alg", JWT_ALGORITHMS)
def test_our_tokens_verify_with_pyjwt(keys: dict[str, JwtKey], alg: JwtAlgorithm) -> None:
    svc = TokenService(KeyRing(keys[alg]), issuer="iss", audience="aud")
    key = keys[alg]
    verifier = key.verification_key
    claims = pyjwt.decode(svc.issue("u"), verifier, algorithms=[alg], audience="aud", issuer="iss")  # type: ignore[arg-type]
    assert claims["sub"] == "u"


@pytest.mark.parametrize("alg", JWT_ALGORITHMS)
def test_pyjwt_tokens_verify_with_us(keys: dict[str, JwtKey], alg: JwtAlgorithm) -> None:
    key = keys[alg]
    signer = key.signing_material
    now = 1_800_000_000
    claims = {"iss": "iss", "aud": "aud", "sub": "u", "jti": "j", "iat": now, "exp": now + 60}
    token = pyjwt.encode(claims, signer, algorithm=alg, headers={"kid": key.kid})  # type: ignore[arg-type]
    svc = TokenService(KeyRing(key), issuer="iss", audience="aud", clock=lambda: now)
    assert svc.verify(token).claims == claims
