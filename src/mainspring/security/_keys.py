"""JWT signing and verification keys, and the key ring that holds them for rotation.

A :class:`JwtKey` binds one key to exactly one algorithm and a ``kid``; key objects are loaded once, so a
verification does no parsing of key material. A :class:`KeyRing` has one signing key and any number of
verification keys (the signing key included); rotating means building a new ring whose signing key is new
and whose verification keys still include the old one until every token it signed has expired.

``cryptography`` (about 10 MB resident) is imported only when an EdDSA, ES256 or RS256 key is generated,
loaded or used: a service that signs with HS256 secrets alone never loads it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import orjson

from mainspring.errors import ConfigError, ConfigProblem
from mainspring.security._jose import b64url_encode

if TYPE_CHECKING:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    _PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    _PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: The algorithms a key may be bound to (RFC 7518 names; "EdDSA" is Ed25519 here, RFC 8037).
JwtAlgorithm = Literal["EdDSA", "ES256", "RS256", "HS256"]
JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = get_args(JwtAlgorithm)

_MIN_HMAC_BYTES = 32  # RFC 7518 section 3.2: at least the hash output size
_MIN_RSA_BITS = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


# ``cryptography`` is imported on the first asymmetric key, and only then; what the hot paths need is
# resolved once (import statements in every sign/verify call would cost about 5 us, an ES256 verify ~70 us).
@functools.cache
def _private_key_types() -> tuple[
    type[ed25519.Ed25519PrivateKey], type[ec.EllipticCurvePrivateKey], type[rsa.RSAPrivateKey]
]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    return ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey


@functools.cache
def _public_key_types() -> tuple[
    type[ed25519.Ed25519PublicKey], type[ec.EllipticCurvePublicKey], type[rsa.RSAPublicKey]
]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    return ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey


class _Signing(NamedTuple):
    invalid_signature: type[InvalidSignature]
    decode_dss_signature: Callable[[bytes], tuple[int, int]]
    encode_dss_signature: Callable[[int, int], bytes]
    sha256: hashes.SHA256
    pkcs1: padding.PKCS1v15
    ecdsa: ec.ECDSA


@functools.cache
def _signing() -> _Signing:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    sha256 = hashes.SHA256()
    return _Signing(
        InvalidSignature,
        decode_dss_signature,
        encode_dss_signature,
        sha256,
        padding.PKCS1v15(),
        ec.ECDSA(sha256),
    )


def _key_error(kid: str | None, reason: str) -> ConfigError:
    return ConfigError(
        "invalid JWT key",
        problems=[ConfigProblem(path=f"jwt key {kid!r}" if kid else "jwt key", reason=reason)],
    )


def _b64d(value: object, member: str, kid: str | None) -> bytes:
    if not isinstance(value, str):
        raise _key_error(kid, f"JWK member {member!r} must be a base64url string")
    if _B64URL.fullmatch(value) is None:
        raise _key_error(kid, f"JWK member {member!r} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _key_error(kid, f"JWK member {member!r} is not valid base64url") from None


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def _check_key(algorithm: str, key: object, kid: str | None) -> None:
    if algorithm not in JWT_ALGORITHMS:
        supported = ", ".join(JWT_ALGORITHMS)
        raise _key_error(kid, f"algorithm {algorithm!r} is not supported; use one of {supported}")
    if algorithm == "HS256":
        if not isinstance(key, bytes) or len(key) < _MIN_HMAC_BYTES:
            raise _key_error(kid, f"an HS256 secret needs at least {_MIN_HMAC_BYTES} random bytes")
        return
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            raise _key_error(kid, "EdDSA needs an Ed25519 key")
    elif algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise _key_error(kid, "ES256 needs an EC key on curve P-256")
    elif not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) or key.key_size < _MIN_RSA_BITS:
        raise _key_error(kid, f"RS256 needs an RSA key of at least {_MIN_RSA_BITS} bits")


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class JwtKey:
    """One key bound to one algorithm and a ``kid``; may sign when it holds the private part or secret.

    Build keys with :meth:`generate`, :meth:`from_pem`, :meth:`from_jwk` or :meth:`hmac`. The repr shows
    the kid and algorithm only, never key material.
    """

    kid: str
    algorithm: JwtAlgorithm
    _private: _PrivateKey | None
    _public: _PublicKey | None
    _secret: bytes | None

    def __repr__(self) -> str:
        kind = "secret" if self.is_symmetric else ("private" if self.can_sign else "public")
        return f"JwtKey(kid={self.kid!r}, algorithm={self.algorithm!r}, {kind})"

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def _build(cls, key: object, algorithm: str, kid: str | None) -> JwtKey:
        _check_key(algorithm, key, kid)
        if isinstance(key, bytes):
            return cls(kid or secrets.token_urlsafe(12), "HS256", None, None, key)
        private = key if isinstance(key, _private_key_types()) else None
        public = private.public_key() if private is not None else key
        assert isinstance(public, _public_key_types())
        made = cls("", algorithm, private, public, None)  # type: ignore[arg-type]
        object.__setattr__(made, "kid", kid or made.thumbprint())
        return made

    @classmethod
    def generate(cls, algorithm: JwtAlgorithm = "EdDSA", *, kid: str | None = None) -> JwtKey:
        """Generate a fresh key for ``algorithm``.

        ``kid`` defaults to the RFC 7638 thumbprint (random for HS256: a thumbprint would hash the secret).
        """
        key: object
        if algorithm == "EdDSA":
            from cryptography.hazmat.primitives.asymmetric import ed25519

            key = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "ES256":
            from cryptography.hazmat.primitives.asymmetric import ec

            key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = secrets.token_bytes(_MIN_HMAC_BYTES)
        return cls._build(key, algorithm, kid)

    @classmethod
    def from_key(
        cls, key: _PrivateKey | _PublicKey | bytes, *, algorithm: JwtAlgorithm, kid: str | None = None
    ) -> JwtKey:
        """Wrap an already loaded ``cryptography`` key object (or HS256 secret bytes)."""
        return cls._build(key, algorithm, kid)

    @classmethod
    def hmac(cls, secret: bytes, *, kid: str) -> JwtKey:
        """An HS256 key from a shared ``secret`` of at least 32 random bytes."""
        return cls._build(secret, "HS256", kid)

    @classmethod
    def from_pem(
        cls,
        pem: bytes | str,
        *,
        algorithm: JwtAlgorithm,
        kid: str | None = None,
        password: bytes | None = None,
    ) -> JwtKey:
        """Load a PEM private key (can sign) or public key / certificate-free SPKI (verify only)."""
        from cryptography.hazmat.primitives import serialization

        data = pem.encode() if isinstance(pem, str) else pem
        key: object
        try:
            if b"PRIVATE KEY" in data:
                key = serialization.load_pem_private_key(data, password=password)
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise _key_error(kid, f"cannot load the PEM key ({type(exc).__name__})") from None
        return cls._build(key, algorithm, kid)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], *, algorithm: JwtAlgorithm | None = None) -> JwtKey:
        """Load a JWK (RFC 7517): OKP/Ed25519, EC/P-256, RSA or oct; private members make a signing key.

        The algorithm comes from ``algorithm`` or the JWK's ``alg``; when both are given they must agree.
        """
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _key_error(None, "JWK member 'kid' must be a string")
        alg = jwk.get("alg", algorithm)
        if algorithm is not None and alg != algorithm:
            raise _key_error(kid, f"the JWK says alg {alg!r} but {algorithm!r} was requested")
        if alg is None:
            raise _key_error(kid, "the JWK has no 'alg'; pass algorithm=...")
        kty = jwk.get("kty")
        key: object
        if kty == "oct":
            key = _b64d(jwk.get("k"), "k", kid)
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise _key_error(kid, "only the Ed25519 OKP curve is supported")
            from cryptography.hazmat.primitives.asymmetric import ed25519

            try:
                if "d" in jwk:
                    key = ed25519.Ed25519PrivateKey.from_private_bytes(_b64d(jwk["d"], "d", kid))
                else:
                    key = ed25519.Ed25519PublicKey.from_public_bytes(_b64d(jwk.get("x"), "x", kid))
            except ValueError:
                raise _key_error(kid, "an Ed25519 key is exactly 32 bytes") from None
        elif kty == "EC":
            if jwk.get("crv") != "P-256":
                raise _key_error(kid, "only the P-256 EC curve is supported")
            from cryptography.hazmat.primitives.asymmetric import ec

            x = int.from_bytes(_b64d(jwk.get("x"), "x", kid), "big")
            y = int.from_bytes(_b64d(jwk.get("y"), "y", kid), "big")
            pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1())
            try:
                if "d" in jwk:
                    d = int.from_bytes(_b64d(jwk["d"], "d", kid), "big")
                    key = ec.EllipticCurvePrivateNumbers(d, pub).private_key()
                else:
                    key = pub.public_key()
            except ValueError:
                raise _key_error(kid, "the EC point is not on the curve") from None
        elif kty == "RSA":
            key = _rsa_from_jwk(jwk, kid)
        else:
            raise _key_error(kid, f"unsupported JWK key type {kty!r}")
        return cls._build(key, str(alg), kid)

    # -- properties -------------------------------------------------------------------------------

    @property
    def is_symmetric(self) -> bool:
        """Whether this is an HS256 shared secret (never published in a JWKS)."""
        return self._secret is not None

    @property
    def can_sign(self) -> bool:
        """Whether this key holds a private key or a secret."""
        return self._private is not None or self._secret is not None

    @property
    def verification_key(self) -> _PublicKey | bytes:
        """The loaded public key object (the secret bytes for HS256), e.g. to hand to another library."""
        if self._secret is not None:
            return self._secret
        assert self._public is not None
        return self._public

    @property
    def signing_material(self) -> _PrivateKey | bytes | None:
        """The loaded private key object (the secret bytes for HS256); ``None`` for a verify-only key."""
        return self._secret if self._secret is not None else self._private

    def public(self) -> JwtKey:
        """The verification-only form of this key (HS256 keys stay symmetric: the secret is both)."""
        if self._private is None:
            return self
        return JwtKey(self.kid, self.algorithm, None, self._public, None)

    def thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key."""
        jwk = self._public_members()
        required = {k: jwk[k] for k in sorted(jwk) if k in ("crv", "e", "kty", "n", "x", "y")}
        return b64url_encode(hashlib.sha256(orjson.dumps(required)).digest())

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with ``kid``, ``alg`` and ``use``; refuses HS256 keys, whose secret is the key."""
        members = self._public_members()
        return {**members, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo); refuses HS256 keys."""
        if self._public is None:
            raise _key_error(self.kid, "an HS256 secret has no public form")
        from cryptography.hazmat.primitives import serialization

        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _public_members(self) -> dict[str, str]:
        pub = self._public
        if pub is None:
            raise _key_error(self.kid, "an HS256 secret has no public form and is never published")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        if isinstance(pub, ed25519.Ed25519PublicKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
        if isinstance(pub, ec.EllipticCurvePublicKey):
            nums = pub.public_numbers()
            return {"kty": "EC", "crv": "P-256", "x": _int_b64(nums.x, 32), "y": _int_b64(nums.y, 32)}
        if isinstance(pub, rsa.RSAPublicKey):
            rnums = pub.public_numbers()
            return {"kty": "RSA", "n": _int_b64(rnums.n), "e": _int_b64(rnums.e)}
        raise _key_error(self.kid, "an HS256 secret has no public form and is never published")

    # -- signing and verification -----------------------------------------------------------------

    def sign(self, signing_input: bytes) -> bytes:
        """Sign ``signing_input`` (``header.payload`` in ASCII) with this key's algorithm."""
        if self._secret is not None:
            return hmac.digest(self._secret, signing_input, "sha256")
        key = self._private
        if key is None:
            raise _key_error(self.kid, "this key holds no private part and cannot sign")
        ed25519_key, ec_key, rsa_key = _private_key_types()
        c = _signing()
        if isinstance(key, ed25519_key):
            return key.sign(signing_input)
        if isinstance(key, ec_key):
            r, s = c.decode_dss_signature(key.sign(signing_input, c.ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if isinstance(key, rsa_key):
            return key.sign(signing_input, c.pkcs1, c.sha256)
        raise _key_error(self.kid, "this key holds no private part and cannot sign")

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid for ``signing_input`` under this key (constant-time for HMAC)."""
        if self._secret is not None:
            return hmac.compare_digest(hmac.digest(self._secret, signing_input, "sha256"), signature)
        pub = self._public
        if pub is None:
            return False
        ed25519_key, ec_key, rsa_key = _public_key_types()
        c = _signing()
        try:
            if isinstance(pub, ed25519_key):
                pub.verify(signature, signing_input)
            elif isinstance(pub, rsa_key):
                pub.verify(signature, signing_input, c.pkcs1, c.sha256)
            elif isinstance(pub, ec_key):
                # JWS carries raw r||s (RFC 7518 section 3.4), not DER.
                if len(signature) != 64:
                    return False
                der = c.encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                pub.verify(der, signing_input, c.ecdsa)
            else:
                return False
        except c.invalid_signature:
            return False
        return True


def _rsa_from_jwk(jwk: Mapping[str, Any], kid: str | None) -> object:
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = int.from_bytes(_b64d(jwk.get("n"), "n", kid), "big")
    e = int.from_bytes(_b64d(jwk.get("e"), "e", kid), "big")
    pub = rsa.RSAPublicNumbers(e, n)
    try:
        if "d" not in jwk:
            return pub.public_key()
        d = int.from_bytes(_b64d(jwk["d"], "d", kid), "big")
        if all(m in jwk for m in ("p", "q")):
            p = int.from_bytes(_b64d(jwk["p"], "p", kid), "big")
            q = int.from_bytes(_b64d(jwk["q"], "q", kid), "big")
        else:
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), pub
        )
        return numbers.private_key()
    except ValueError:
        raise _key_error(kid, "the RSA key numbers are inconsistent") from None


class KeyRing:
    """One signing key and the verification keys by ``kid``; immutable, so rotation builds a new ring.

    The signing key is always also a verification key. ``rotate`` keeps the previous keys for
    verification, ``retire`` drops one once nothing it signed can still be valid.
    """

    __slots__ = ("_by_kid", "_signing")

    def __init__(self, signing_key: JwtKey | None, verification_keys: Iterable[JwtKey] = ()) -> None:
        keys = list(verification_keys)
        if signing_key is not None:
            if not signing_key.can_sign:
                raise _key_error(signing_key.kid, "the signing key holds no private part or secret")
            keys.insert(0, signing_key)
        if not keys:
            raise _key_error(None, "a key ring needs at least one key")
        by_kid: dict[str, JwtKey] = {}
        for key in keys:
            if key.kid in by_kid and by_kid[key.kid] is not key:
                raise _key_error(key.kid, "two different keys share this kid; every kid must be unique")
            by_kid[key.kid] = key
        self._signing = signing_key
        self._by_kid = by_kid

    def __repr__(self) -> str:
        signing = self._signing.kid if self._signing else None
        return f"KeyRing(signing={signing!r}, kids={list(self._by_kid)!r})"

    @property
    def signing_key(self) -> JwtKey | None:
        """The key new tokens are signed with (``None`` for a verification-only ring)."""
        return self._signing

    @property
    def keys(self) -> tuple[JwtKey, ...]:
        """Every verification key, signing key first."""
        return tuple(self._by_kid.values())

    def get(self, kid: str) -> JwtKey | None:
        """The key with this ``kid``, if any."""
        return self._by_kid.get(kid)

    def rotate(self, new_signing_key: JwtKey) -> KeyRing:
        """A new ring signing with ``new_signing_key``; every current key stays for verification."""
        return KeyRing(new_signing_key, [k for k in self._by_kid.values() if k.kid != new_signing_key.kid])

    def retire(self, kid: str) -> KeyRing:
        """A new ring without the verification key ``kid``; the signing key cannot be retired."""
        if self._signing is not None and self._signing.kid == kid:
            raise _key_error(kid, "cannot retire the signing key; rotate to a new one first")
        if kid not in self._by_kid:
            raise _key_error(kid, "no key with this kid in the ring")
        return KeyRing(self._signing, [k for k in self._by_kid.values() if k.kid != kid])

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (RFC 7517) of the asymmetric public keys; HS256 secrets are never included."""
        return {"keys": [k.public_jwk() for k in self._by_kid.values() if not k.is_symmetric]}
