"""JwksClient: caching, refresh on an unknown kid, rate limiting, failures, and a real HTTP fetch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from mainspring.errors import AuthenticationError, ServiceUnavailableError, ValidationError
from mainspring.security import JwksClient, JwtKey, KeyRing, TokenService, parse_jwks

ISS = "https://sso.example.test/realms/main"
AUD = "orders-api"


class FakeIssuer:
    """An issuer whose JWKS document and availability the test controls; counts fetches."""

    def __init__(self) -> None:
        self.keys = [JwtKey.generate("RS256", kid="rsa-1")]
        self.calls = 0
        self.down = False
        self.now = 0.0

    def tokens(self, key: JwtKey) -> TokenService:
        return TokenService(KeyRing(key), issuer=ISS, audience=AUD)

    async def fetch(self, url: str, seconds: float) -> bytes:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return orjson.dumps(KeyRing(None, self.keys).jwks())

    def client(self, **kwargs: Any) -> JwksClient:
        return JwksClient(
            "https://sso.example.test/certs",
            issuer=ISS,
            audience=AUD,
            fetch=self.fetch,
            clock=lambda: self.now,
            **kwargs,
        )


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


async def test_first_verify_fetches_and_later_ones_use_the_cache(issuer: FakeIssuer) -> None:
    client = issuer.client()
    assert client.ring is None
    assert issuer.calls == 0  # nothing fetched at construction
    token = issuer.tokens(issuer.keys[0]).issue("user-1")
    for _ in range(5):
        assert (await client.verify(token)).subject == "user-1"
    assert issuer.calls == 1


async def test_cache_expires_after_ttl(issuer: FakeIssuer) -> None:
    client = issuer.client(cache_ttl=300)
    token = issuer.tokens(issuer.keys[0]).issue("u")
    await client.verify(token)
    issuer.now = 301
    await client.verify(token)
    assert issuer.calls == 2


async def test_unknown_kid_triggers_one_refresh_and_then_verifies(issuer: FakeIssuer) -> None:
    client = issuer.client()
    await client.verify(issuer.tokens(issuer.keys[0]).issue("u"))
    rotated = JwtKey.generate("ES256", kid="ec-2")
    issuer.keys.append(rotated)
    issuer.now = 60
    assert (await client.verify(issuer.tokens(rotated).issue("u"))).kid == "ec-2"
    assert issuer.calls == 2


async def test_unknown_kids_are_refetched_at_most_once_per_interval(issuer: FakeIssuer) -> None:
    client = issuer.client(min_refresh_interval=30)
    await client.verify(issuer.tokens(issuer.keys[0]).issue("u"))
    stranger = issuer.tokens(JwtKey.generate("EdDSA", kid="made-up"))
    issuer.now = 40
    for _ in range(20):
        with pytest.raises(AuthenticationError, match="not in the key ring"):
            await client.verify(stranger.issue("u"))
    assert issuer.calls == 2  # the first unknown kid refetched, the other 19 were rate-limited


async def test_concurrent_verifies_share_one_fetch(issuer: FakeIssuer) -> None:
    client = issuer.client()
    token = issuer.tokens(issuer.keys[0]).issue("u")
    results = await asyncio.gather(*(client.verify(token) for _ in range(50)))
    assert {r.subject for r in results} == {"u"}
    assert issuer.calls == 1


async def test_failed_refresh_keeps_the_cached_keys(issuer: FakeIssuer) -> None:
    client = issuer.client(cache_ttl=10)
    token = issuer.tokens(issuer.keys[0]).issue("u")
    await client.verify(token)
    issuer.down = True
    issuer.now = 20
    assert (await client.verify(token)).subject == "u"
    assert (await client.verify(token)).subject == "u"
    assert issuer.calls == 2  # the failed attempt is not retried within min_refresh_interval


async def test_no_keys_at_all_is_service_unavailable_and_not_hammered(issuer: FakeIssuer) -> None:
    issuer.down = True
    client = issuer.client(min_refresh_interval=30)
    token = issuer.tokens(issuer.keys[0]).issue("u")
    for _ in range(3):
        with pytest.raises(ServiceUnavailableError, match="cannot fetch the issuer's keys"):
            await client.verify(token)
    assert issuer.calls == 1
    issuer.down = False
    issuer.now = 31
    assert (await client.verify(token)).subject == "u"


async def test_tokens_are_still_fully_checked(issuer: FakeIssuer) -> None:
    client = issuer.client()
    other_audience = TokenService(KeyRing(issuer.keys[0]), issuer=ISS, audience="billing")
    with pytest.raises(AuthenticationError, match="audience"):
        await client.verify(other_audience.issue("u"))


async def test_malformed_token_is_refused_before_any_fetch(issuer: FakeIssuer) -> None:
    client = issuer.client()
    with pytest.raises(AuthenticationError, match="three dot-separated parts"):
        await client.verify("not a token")
    assert issuer.calls == 0


def test_parse_jwks_skips_secrets_encryption_keys_unknown_algs_and_duplicates() -> None:
    ed = JwtKey.generate("EdDSA", kid="ed").public_jwk()
    rsa_jwk = JwtKey.generate("RS256", kid="rsa").public_jwk()
    doc = {
        "keys": [
            ed,
            {**rsa_jwk, "alg": None},  # no alg: RSA implies RS256
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {**rsa_jwk, "kid": "enc", "use": "enc"},
            {**rsa_jwk, "kid": "ps", "alg": "PS256"},
            {**ed, "x": "AAAA"},  # same kid, broken: skipped
            {"kty": "RSA"},  # no kid
            "junk",
        ]
    }
    doc["keys"][1] = {k: v for k, v in doc["keys"][1].items() if v is not None}  # type: ignore[union-attr]
    keys = parse_jwks(orjson.dumps(doc))
    assert [(k.kid, k.algorithm) for k in keys] == [("ed", "EdDSA"), ("rsa", "RS256")]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": {}}'])
def test_parse_jwks_refuses_documents_without_a_keys_list(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(body)


def test_plain_http_url_is_refused_unless_allowed() -> None:
    with pytest.raises(ValidationError, match="https"):
        JwksClient("http://sso.example.test/certs", issuer=ISS, audience=AUD)
    JwksClient("http://127.0.0.1/certs", issuer=ISS, audience=AUD, allow_http=True)


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, JwtKey]]:
    key = JwtKey.generate("EdDSA", kid="served")
    body = orjson.dumps(KeyRing(key).jwks())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs", key
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_default_fetcher_downloads_the_document_over_http(jwks_server: tuple[str, JwtKey]) -> None:
    url, key = jwks_server
    client = JwksClient(url, issuer=ISS, audience=AUD, allow_http=True)
    token = TokenService(KeyRing(key), issuer=ISS, audience=AUD).issue("u")
    assert (await client.verify(token)).kid == "served"
    assert client.fetch_count == 1


async def test_unreachable_url_is_service_unavailable() -> None:
    client = JwksClient("http://127.0.0.1:9/certs", issuer=ISS, audience=AUD, allow_http=True, timeout=2)
    key = JwtKey.generate("EdDSA", kid="k")
    with pytest.raises(ServiceUnavailableError):
        await client.verify(TokenService(KeyRing(key), issuer=ISS, audience=AUD).issue("u"))
