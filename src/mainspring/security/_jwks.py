"""A JWKS client: verify tokens of an external issuer (an OIDC/SSO provider) against its published keys.

The key set is fetched on first use, cached for ``cache_ttl`` seconds and refetched early when a token
names a ``kid`` the cache does not hold (a provider rotated its keys), at most once per
``min_refresh_interval`` so a flood of tokens with made-up kids cannot turn into a flood of fetches.
When a refresh fails the previous keys stay in use; only a client that never got any keys refuses.
Symmetric (``oct``) keys in a fetched document are ignored: a secret published over the network is not
a secret.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import orjson

from mainspring.errors import ConfigError, ServiceUnavailableError, ValidationError
from mainspring.logging import get_logger
from mainspring.security._jose import decode_json_object, split_compact
from mainspring.security._keys import JWT_ALGORITHMS, JwtAlgorithm, JwtKey, KeyRing
from mainspring.security._tokens import DEFAULT_REQUIRED_CLAIMS, TokenService, VerifiedToken

log = get_logger("mainspring.security")

#: A fetched JWKS document larger than this is refused.
MAX_JWKS_BYTES = 1024 * 1024

#: ``fetch(url, seconds) -> body``: how the client downloads the document (default: urllib in a thread).
JwksFetcher = Callable[[str, float], Awaitable[bytes]]

# When a JWK has no "alg", the only algorithm its key type can mean here.
_IMPLIED_ALG: dict[tuple[str, str | None], JwtAlgorithm] = {
    ("OKP", "Ed25519"): "EdDSA",
    ("EC", "P-256"): "ES256",
    ("RSA", None): "RS256",
}


async def fetch_with_urllib(url: str, seconds: float) -> bytes:
    """Download ``url`` with the standard library in a worker thread, bounded by ``seconds``."""

    def get() -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=seconds) as response:
            body: bytes = response.read(MAX_JWKS_BYTES + 1)
        return body

    return await asyncio.wait_for(asyncio.to_thread(get), seconds)


def parse_jwks(body: bytes | str | dict[str, Any]) -> list[JwtKey]:
    """The usable verification keys of a JWKS document; keys for other uses or algorithms are skipped."""
    doc = body if isinstance(body, dict) else orjson.loads(body)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError("the document has no 'keys' list")
    usable: list[JwtKey] = []
    seen: set[str] = set()
    for jwk in keys:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue
        alg = jwk.get("alg")
        if alg is None:
            crv = jwk.get("crv") if jwk.get("kty") != "RSA" else None
            alg = _IMPLIED_ALG.get((str(jwk.get("kty")), crv))
        if alg not in JWT_ALGORITHMS or alg == "HS256":
            continue
        public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        if jwk["kid"] in seen:
            log.warning("jwks key skipped", kid=jwk["kid"][:64], reason="duplicate kid")
            continue
        try:
            usable.append(JwtKey.from_jwk({**public, "alg": alg}))
        except ConfigError:
            log.warning("jwks key skipped", kid=jwk["kid"][:64], reason="invalid key material")
            continue
        seen.add(jwk["kid"])
    return usable


class JwksClient:
    """Verify tokens of an external issuer with keys from its JWKS URL (cached, refreshed, rate-limited).

    Nothing is fetched in ``__init__``; the first :meth:`verify` (or an explicit :meth:`refresh`) does it.
    ``issuer`` and ``audience`` are checked on every token, as are the claims in ``required``.
    """

    def __init__(
        self,
        url: str,
        *,
        issuer: str,
        audience: str,
        cache_ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        leeway: float = 30.0,
        required: Iterable[str] = DEFAULT_REQUIRED_CLAIMS,
        understood_crit: Collection[str] = (),
        allow_http: bool = False,
        fetch: JwksFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme != "https" and not (allow_http and scheme == "http"):
            raise ValidationError(
                f"the JWKS URL must use https (got {scheme or 'no'} scheme); allow_http is for tests only"
            )
        if cache_ttl <= 0 or min_refresh_interval < 0 or timeout <= 0:
            raise ValidationError("cache_ttl and timeout must be positive, min_refresh_interval not negative")
        self.url = url
        self.cache_ttl = cache_ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._service_args: dict[str, Any] = {
            "issuer": issuer,
            "audience": audience,
            "leeway": leeway,
            "required": tuple(required),
            "understood_crit": tuple(understood_crit),
            "clock": wall_clock,
        }
        self._fetch = fetch or fetch_with_urllib
        self._clock = clock
        self._service: TokenService | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._last_failure = ""
        self._failed = False
        self._lock = asyncio.Lock()
        #: How many times the document was fetched successfully (for tests and metrics).
        self.fetch_count = 0

    @property
    def ring(self) -> KeyRing | None:
        """The keys currently cached, or ``None`` before the first successful fetch."""
        return self._service.ring if self._service is not None else None

    async def refresh(self) -> KeyRing:
        """Fetch the document now (callers serialise on a lock); keep the old keys if the fetch fails."""
        async with self._lock:
            return await self._refresh_locked()

    async def verify(self, token: str | bytes) -> VerifiedToken:
        """Verify ``token`` against the issuer's keys; refetch them once if its ``kid`` is new."""
        # Malformed tokens are refused before they can cause a fetch.
        kid = decode_json_object(split_compact(token)[0], "header").get("kid")
        service = await self._current()
        if isinstance(kid, str) and service.ring.get(kid) is None:
            service = await self._refresh_for_kid(kid)
        return service.verify(token)

    async def _current(self) -> TokenService:
        now = self._clock()
        service = self._service
        if service is not None and now - self._fetched_at < self.cache_ttl:
            return service
        async with self._lock:
            service = self._service
            if service is not None and self._clock() - self._fetched_at < self.cache_ttl:
                return service  # another caller refreshed while this one waited
            recently_failed = self._failed and self._clock() - self._attempted_at < self.min_refresh_interval
            if service is not None and recently_failed:
                return service  # the last attempt failed moments ago: keep the stale keys for now
            await self._refresh_locked()
            assert self._service is not None
            return self._service

    async def _refresh_for_kid(self, kid: str) -> TokenService:
        async with self._lock:
            service = self._service
            assert service is not None
            if service.ring.get(kid) is not None:
                return service  # another caller's refresh brought it
            if self._clock() - self._attempted_at < self.min_refresh_interval:
                return service  # rate-limited: verify() will reject the unknown kid
            await self._refresh_locked()
            assert self._service is not None
            return self._service

    async def _refresh_locked(self) -> KeyRing:
        if self._service is None and self._clock() - self._attempted_at < self.min_refresh_interval:
            # Never fetched successfully and the last try was moments ago: refuse without hammering.
            raise ServiceUnavailableError(self._last_failure)
        self._attempted_at = self._clock()
        try:
            body = await self._fetch(self.url, self.timeout)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"the document is over {MAX_JWKS_BYTES} bytes")
            keys = parse_jwks(body)
            if not keys:
                raise ValueError("the document holds no usable signing key")
        except (OSError, TimeoutError, ValueError, urllib.error.URLError) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
            self._failed = True
            if self._service is not None:
                log.warning("jwks refresh failed, keeping cached keys", url=self.url, reason=reason)
                return self._service.ring
            self._last_failure = (
                f"cannot fetch the issuer's keys from {self.url} ({reason}); tokens cannot be verified "
                "until it answers"
            )
            raise ServiceUnavailableError(self._last_failure) from exc
        ring = KeyRing(None, keys)
        self._service = TokenService(ring, **self._service_args)
        self._fetched_at = self._clock()
        self._failed = False
        self.fetch_count += 1
        return ring
