"""Access tokens: issue and verify JWTs (JWS compact) against a :class:`KeyRing`.

Verification is written directly on ``cryptography`` (the standard library's ``hmac`` for HS256) so
every rejection rule is ours and explicit, in this order: size, shape and alphabet; header JSON; ``alg``
(``none`` refused); headers that point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``, never followed);
``crit``; ``kid`` lookup; algorithm confusion and per-key algorithm; signature; then the claims (``exp``,
``nbf``, ``iat``, ``iss``, ``aud``, required claims). A token seen before (:class:`TokenService` keeps up
to ``verify_cache_size``) skips the steps up to the signature, which depend only on the token and the
key ring; its claims are checked on every call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mainspring.errors import AuthenticationError, ConfigError, ConfigProblem, ValidationError
from mainspring.security._jose import (
    b64url_decode,
    b64url_encode,
    decode_json_object,
    encode_json,
    reject,
    split_compact,
)
from mainspring.security._keys import JwtKey, KeyRing
from mainspring.security._revocation import RevocationList

#: Claims required by default; each missing one is its own rejection.
DEFAULT_REQUIRED_CLAIMS: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub", "jti")
#: Claims :meth:`TokenService.issue` sets itself; passing them in ``claims`` is an error.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti"})
# Headers that tell a verifier where to fetch a key or carry one: following them lets the token choose its
# own key (RFC 8725 section 3.10), so their mere presence is a rejection.
_KEY_POINTING_HEADERS = ("jku", "x5u", "jwk", "x5c")
# For an Ed25519 key both the RFC 8037 name and the RFC 9864 fully-specified name are accepted.
_ALIASES: dict[str, frozenset[str]] = {
    "EdDSA": frozenset({"EdDSA", "Ed25519"}),
    "ES256": frozenset({"ES256"}),
    "RS256": frozenset({"RS256"}),
    "HS256": frozenset({"HS256"}),
}
_HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims passed every check.

    Treat ``claims`` and ``header`` as read-only: :class:`TokenService` hands the same object to every
    request presenting the same token while it is cached.
    """

    claims: dict[str, Any]
    header: dict[str, Any]
    kid: str
    algorithm: str

    @property
    def subject(self) -> str:
        """The ``sub`` claim (empty when a signature-only check skipped claim rules)."""
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else ""

    @property
    def jti(self) -> str | None:
        """The ``jti`` claim, the token's unique id (use it for revocation)."""
        jti = self.claims.get("jti")
        return jti if isinstance(jti, str) else None

    @property
    def expires_at(self) -> float | None:
        """The ``exp`` claim in seconds since the epoch."""
        exp = self.claims.get("exp")
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_jws(
    token: str | bytes, ring: KeyRing, *, understood_crit: Collection[str] = ()
) -> tuple[dict[str, Any], str, JwtKey]:
    """Check a compact JWS against ``ring``; return the header, the payload's base64url text and the key.

    Every header rule and the signature are checked here; the payload is not decoded.
    """
    h64, p64, s64 = split_compact(token)
    header = decode_json_object(h64, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        reject("malformed", "the header has no 'alg'")
    if alg.lower() == "none":
        reject("alg_none", "alg 'none' (an unsecured token) is never accepted")
    for name in _KEY_POINTING_HEADERS:
        if name in header:
            reject(
                "key_header",
                f"the header carries {name!r}; keys named or embedded by a token are never followed, "
                "only keys in the key ring are used",
            )
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit):
            reject("malformed", "'crit' must be a non-empty list of header names")
        unknown = sorted(c for c in crit if c not in understood_crit)
        if unknown:
            reject("crit", f"the header marks unsupported extensions as critical: {', '.join(unknown)}")
    kid = header.get("kid")
    key: JwtKey | None
    if kid is None:
        keys = ring.keys
        if len(keys) != 1:
            reject("kid_missing", f"the header has no 'kid' and the key ring holds {len(keys)} keys")
        key = keys[0]
    elif not isinstance(kid, str):
        reject("malformed", "'kid' must be a string")
    else:
        key = ring.get(kid)
        if key is None:
            reject(
                "kid_unknown",
                f"kid {kid[:64]!r} is not in the key ring; the issuer may have rotated to a key this "
                "service does not know yet",
            )
    if alg not in _ALIASES[key.algorithm]:
        if alg in _HMAC_ALGS and not key.is_symmetric:
            reject(
                "alg_confusion",
                f"an {alg} token was presented for {key.algorithm} public key {key.kid!r}; "
                "a public key is never used as an HMAC secret",
            )
        reject(
            "alg_not_allowed",
            f"alg {alg[:16]!r} is not allowed for key {key.kid!r}, which accepts only {key.algorithm}",
        )
    signature = b64url_decode(s64, "signature")
    if not key.verify(f"{h64}.{p64}".encode("ascii"), signature):
        reject("bad_signature", f"the signature does not match key {key.kid!r}")
    return header, p64, key


class TokenService:
    """Issue and verify access tokens (JWT) with a :class:`KeyRing`.

    ``issuer`` and ``audience`` are written into issued tokens and required on verified ones;
    ``leeway`` (seconds) absorbs clock skew for ``exp``, ``nbf`` and ``iat``. ``clock`` returns seconds
    since the epoch (tests pass a fixed one).

    With a ``revocation`` list, tokens are checked against it by :meth:`verify_async`; the list is
    async (Redis), so the sync :meth:`verify` then refuses to run rather than skip the check.

    A client sends the same token with every request until it expires, so the outcome of the signature
    check and the decoded claims are kept for up to ``verify_cache_size`` tokens (0 turns it off); the
    claim rules (``exp``, ``nbf``, ...) and the revocation list are still checked on every call, and a
    new key ring (:meth:`use_ring`) starts afresh. The cache holds the token strings themselves.
    """

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        audience: str,
        access_ttl: float = 900.0,
        leeway: float = 30.0,
        required: Iterable[str] = DEFAULT_REQUIRED_CLAIMS,
        understood_crit: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        revocation: RevocationList | None = None,
        verify_cache_size: int = 1024,
    ) -> None:
        if access_ttl <= 0:
            raise ValidationError("access_ttl must be positive")
        if leeway < 0:
            raise ValidationError("leeway must not be negative")
        if (
            isinstance(verify_cache_size, bool)
            or not isinstance(verify_cache_size, int)
            or verify_cache_size < 0
        ):
            raise ValidationError("verify_cache_size must be an integer >= 0")
        self._cache_size = verify_cache_size
        # token -> (the ring that verified it, the result); see the class docstring.
        self._verified: dict[str, tuple[KeyRing, VerifiedToken]] = {}
        self._ring = ring
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.leeway = leeway
        self.required: tuple[str, ...] = tuple(required)
        self._crit = frozenset(understood_crit)
        self._clock = clock
        if revocation is not None and not isinstance(revocation, RevocationList):
            raise ConfigError(
                "invalid TokenService settings",
                problems=[ConfigProblem("revocation", "must implement RevocationList (is_revoked, revoke)")],
            )
        self.revocation = revocation

    @property
    def ring(self) -> KeyRing:
        """The key ring in use."""
        return self._ring

    def use_ring(self, ring: KeyRing) -> None:
        """Switch to ``ring`` (after a rotation); one attribute assignment, so safe under concurrency."""
        self._ring = ring

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document of the ring's public keys (never an HS256 secret)."""
        return self._ring.jwks()

    def issue(
        self, subject: str, *, claims: Mapping[str, Any] | None = None, ttl: float | None = None
    ) -> str:
        """Sign an access token for ``subject`` with the ring's signing key.

        Sets ``iss``, ``sub``, ``aud``, ``iat``, ``exp`` (now + ``ttl`` or ``access_ttl``) and a random
        ``jti``; ``claims`` adds others (``scope``, ``roles``, ``nbf``, ...) but may not override those.
        """
        key = self._ring.signing_key
        if key is None:
            raise ValidationError("this key ring has no signing key; it can only verify")
        if not subject:
            raise ValidationError("subject must be a non-empty string")
        extra = dict(claims or {})
        clash = RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValidationError(f"claims may not set {', '.join(sorted(clash))}; TokenService sets them")
        now = int(self._clock())
        lifetime = self.access_ttl if ttl is None else ttl
        if lifetime <= 0:
            raise ValidationError("ttl must be positive")
        body = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "iat": now,
            "exp": now + int(lifetime),
            "jti": secrets.token_urlsafe(16),
            **extra,
        }
        header = {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
        signing_input = f"{encode_json(header)}.{encode_json(body)}"
        return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"

    def verify(self, token: str | bytes) -> VerifiedToken:
        """Verify the signature and every claim rule; raise :class:`AuthenticationError` on any failure.

        A service built with a ``revocation`` list must call :meth:`verify_async` instead: this method
        cannot await the list, and raises :class:`ConfigError` rather than accept a revoked token.
        """
        if self.revocation is not None:
            raise ConfigError(
                "this TokenService checks a revocation list, which is async: use `await verify_async(token)`"
            )
        return self._verify(token)

    async def verify_async(self, token: str | bytes) -> VerifiedToken:
        """Verify like :meth:`verify`, then refuse a token whose ``jti`` is on the revocation list.

        Without a ``revocation`` list it is :meth:`verify`. A revoked token raises
        :class:`AuthenticationError` (reason ``revoked``); a token without a ``jti`` cannot be checked
        and is refused (reason ``missing_jti``). A list that cannot answer (Redis down) raises
        :class:`~mainspring.errors.ServiceUnavailableError`: the check fails closed.
        """
        verified = self._verify(token)
        if self.revocation is not None:
            jti = verified.jti
            if not jti:
                reject("missing_jti", "the token has no 'jti', so its revocation cannot be checked")
            if await self.revocation.is_revoked(jti):
                reject("revoked", "token has been revoked")
        return verified

    def _verify(self, token: str | bytes) -> VerifiedToken:
        cache = self._verified
        if self._cache_size and isinstance(token, str):
            hit = cache.get(token)
            if hit is not None and hit[0] is self._ring:
                try:
                    self._check_claims(hit[1].claims)
                except AuthenticationError:
                    cache.pop(token, None)  # expired: it will never pass again
                    raise
                return hit[1]
        ring = self._ring
        verified = self.verify_signature_only(token)
        self._check_claims(verified.claims)
        if self._cache_size and isinstance(token, str):
            if len(cache) >= self._cache_size:
                cache.clear()  # atomic, unlike evicting one entry while another thread inserts
            cache[token] = (ring, verified)
        return verified

    def verify_signature_only(self, token: str | bytes) -> VerifiedToken:
        """Verify header rules and the signature but not the claims (``exp``, ``aud``, ``iss``, ...).

        Only for published test vectors and offline inspection of tokens; never to authenticate a call.
        """
        header, p64, key = verify_jws(token, self._ring, understood_crit=self._crit)
        claims = decode_json_object(p64, "claims set")
        return VerifiedToken(claims, header, key.kid, header["alg"])

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        leeway = self.leeway
        for name in self.required:
            if name not in claims:
                reject(f"missing_{name}", f"the required claim {name!r} is missing")
        exp = claims.get("exp")
        if exp is not None:
            if not _is_number(exp):
                reject("malformed", "'exp' must be a number of seconds since the epoch")
            if now > exp + leeway:
                reject("expired", f"the token expired {now - exp:.0f} s ago (leeway {leeway:g} s)")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                reject("malformed", "'nbf' must be a number of seconds since the epoch")
            if nbf > now + leeway:
                reject(
                    "not_yet_valid",
                    f"the token is not valid for another {nbf - now:.0f} s (nbf; leeway {leeway:g} s)",
                )
        iat = claims.get("iat")
        if iat is not None:
            if not _is_number(iat):
                reject("malformed", "'iat' must be a number of seconds since the epoch")
            if iat > now + leeway:
                reject(
                    "iat_future",
                    f"the token claims it was issued {iat - now:.0f} s in the future (leeway {leeway:g} s)",
                )
        if "iss" in claims and claims["iss"] != self.issuer:
            reject("wrong_issuer", f"the issuer is not the expected one ({self.issuer!r})")
        if "aud" in claims:
            aud = claims["aud"]
            if isinstance(aud, str):
                ok = aud == self.audience
            elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
                ok = self.audience in aud
            else:
                reject("malformed", "'aud' must be a string or a list of strings")
            if not ok:
                reject("wrong_audience", f"the token is not meant for this audience ({self.audience!r})")
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                reject("malformed", f"{name!r} must be a string")
