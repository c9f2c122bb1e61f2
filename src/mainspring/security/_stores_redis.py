"""Redis stores for API keys, refresh tokens, TOTP replay and recovery codes.

Every check-and-set is one atomic Redis command or one Lua script, so processes sharing the Redis
cannot interleave inside a decision: ``SET NX``/``SET XX`` for API keys, one script per refresh-token
rotation (reuse detection and family revocation included), one script per TOTP claim, ``SREM`` for a
recovery code. Keys expire with what they hold: a refresh token at its expiry, its family marker at the
last expiry of the family, a TOTP replay record after the verification window.

The rotation script reaches the family key it learns from the token record, so the stores need one
Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import orjson

from mainspring._compat import require
from mainspring._lifecycle import AsyncLifecycle
from mainspring.errors import InternalError, ServiceUnavailableError, ValidationError
from mainspring.security._apikeys import ApiKeyRecord
from mainspring.security._refresh import RefreshTokenRecord, RotateOutcome
from mainspring.security._stores_base import (
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MAX_PREFIX_CHARS,
    check_api_key_record,
    check_code_hashes,
    check_number,
    check_refresh_record,
    check_sha256,
    check_text,
)

__all__ = ["RedisApiKeyStore", "RedisRecoveryCodeStore", "RedisRefreshTokenStore", "RedisTotpReplayStore"]

T = TypeVar("T")

# Replace an API key record only if one exists; a revoked record stays revoked, so a concurrent
# verify() writing last_used_at cannot undo a revoke() that landed in between.
_API_KEY_UPDATE_LUA: Final = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if cjson.decode(current)['revoked'] then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS[1] token key, KEYS[2] family key. ARGV: family_id, subject, issued_at, expires_at,
# family_expires_at ('' for none), expiry in ms.
_REFRESH_ADD_LUA: Final = """
redis.call('HSET', KEYS[1], 'family', ARGV[1], 'subject', ARGV[2], 'issued_at', ARGV[3],
  'expires_at', ARGV[4], 'family_expires_at', ARGV[5], 'used', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
local horizon = tonumber(redis.call('HGET', KEYS[2], 'horizon') or '0')
if tonumber(ARGV[6]) > horizon then
  redis.call('HSET', KEYS[2], 'horizon', ARGV[6])
  redis.call('PEXPIREAT', KEYS[2], ARGV[6])
end
return 1
"""

# The whole rotation in one step. KEYS[1] is the presented token's key. ARGV: family key prefix, now,
# successor key, successor issued_at, successor expires_at, successor expiry in ms (uncapped).
# Reply: {outcome, family, subject, issued_at, expires_at, family_expires_at, used}.
_REFRESH_ROTATE_LUA: Final = """
local r = redis.call('HMGET', KEYS[1], 'family', 'subject', 'issued_at', 'expires_at',
  'family_expires_at', 'used')
if not r[1] then return {'unknown'} end
local fkey = ARGV[1] .. r[1]
if redis.call('HGET', fkey, 'revoked') == '1' then
  return {'revoked', r[1], r[2], r[3], r[4], r[5], r[6]}
end
if r[6] == '1' then
  redis.call('HSET', fkey, 'revoked', '1')
  if redis.call('PTTL', fkey) < 0 then
    redis.call('PEXPIREAT', fkey, string.format('%d', math.ceil(tonumber(r[4]) * 1000)))
  end
  return {'reused', r[1], r[2], r[3], r[4], r[5], r[6]}
end
if tonumber(r[4]) <= tonumber(ARGV[2]) then
  return {'expired', r[1], r[2], r[3], r[4], r[5], r[6]}
end
redis.call('HSET', KEYS[1], 'used', '1')
local expires, ms = ARGV[5], tonumber(ARGV[6])
if r[5] ~= '' and tonumber(r[5]) < tonumber(expires) then
  expires = r[5]
  ms = math.ceil(tonumber(r[5]) * 1000)
end
redis.call('HSET', ARGV[3], 'family', r[1], 'subject', r[2], 'issued_at', ARGV[4],
  'expires_at', expires, 'family_expires_at', r[5], 'used', '0')
local msstr = string.format('%d', ms)
redis.call('PEXPIREAT', ARGV[3], msstr)
local horizon = tonumber(redis.call('HGET', fkey, 'horizon') or '0')
if ms > horizon then
  redis.call('HSET', fkey, 'horizon', msstr)
  redis.call('PEXPIREAT', fkey, msstr)
end
return {'rotated', r[1], r[2], ARGV[4], expires, r[5], '0'}
"""

# Revoke a family that still has live tokens (its key exists); an unknown family has nothing to revoke.
_REFRESH_REVOKE_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', '1')
return 1
"""

# Record ARGV[1] as the last accepted step of KEYS[1] if it is later than the stored one.
_TOTP_CLAIM_LUA: Final = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class _RedisStore(AsyncLifecycle):
    """A Redis client owned by one store: built on :meth:`start`, closed on :meth:`stop`."""

    _feature: str = "a Redis security store"

    def __init__(self, url: str, *, timeout: float, key_prefix: str) -> None:
        if timeout <= 0:
            raise ValidationError(f"{self._feature} timeout must be positive seconds, got {timeout!r}")
        if not isinstance(key_prefix, str):
            raise ValidationError(f"{self._feature} key_prefix must be a str")
        self._url = url
        self._timeout = timeout
        self._prefix = key_prefix
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    async def start(self) -> None:
        """Create the client; the connection opens on first use, so a down Redis doesn't block start."""
        if self._client is not None:
            return
        redis = require("redis", extra="redis", feature=self._feature)
        asyncio_redis = require("redis.asyncio", extra="redis", feature=self._feature)
        self._errors = (redis.exceptions.RedisError, OSError, TimeoutError)
        self._client = asyncio_redis.Redis.from_url(
            self._url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
        )

    async def stop(self) -> None:
        """Close the client and its connections; safe to call more than once."""
        client, self._client = self._client, None
        self._scripts = {}
        if client is not None:
            await client.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise ServiceUnavailableError(f"{self._feature} is not started: call start() or use async with")
        return self._client

    def _script(self, source: str) -> Any:
        # register_script sends EVALSHA and falls back to EVAL (which caches the script) on NOSCRIPT.
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._require_client().register_script(source)
        return script

    async def _call(self, action: str, call: Callable[[Any], Awaitable[T]]) -> T:
        client = self._require_client()
        try:
            async with asyncio.timeout(self._timeout):
                return await call(client)
        except self._errors as exc:
            raise ServiceUnavailableError(
                f"{self._feature}: {action} failed ({type(exc).__name__}); check that Redis is reachable",
                details={"error": type(exc).__name__},
            ) from exc

    def _corrupt(self, key: str, exc: Exception) -> InternalError:
        return InternalError(
            f"{self._feature}: the value at {key!r} is not a record this store wrote ({type(exc).__name__})",
            details={"key": key},
        )


class RedisApiKeyStore(_RedisStore):
    """An :class:`~mainspring.security.ApiKeyStore` in Redis: one JSON string per key prefix.

    ``add`` is ``SET NX`` and ``update`` a script that replaces an existing record only and never clears
    ``revoked``. Records do not expire: an expired key must still say "expired" when presented. Every call
    is bounded by ``timeout`` seconds; Redis errors raise :class:`ServiceUnavailableError`.
    """

    _feature = "the Redis API key store"

    def __init__(self, url: str, *, timeout: float = 1.0, key_prefix: str = "mainspring:apikey:") -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        super().__init__(url, timeout=timeout, key_prefix=key_prefix)

    @staticmethod
    def _encode(record: ApiKeyRecord, *, revoked: bool) -> bytes:
        return orjson.dumps(
            {
                "owner": record.owner,
                "secret_hash": record.secret_hash.hex(),
                "scopes": list(record.scopes),
                "name": record.name,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "last_used_at": record.last_used_at,
                "revoked": revoked,
            }
        )

    async def add(self, record: ApiKeyRecord) -> bool:
        """Store a new record unless its prefix is taken (``SET NX``)."""
        check_api_key_record(record)
        value = self._encode(record, revoked=record.revoked)
        done = await self._call("add", lambda c: c.set(self._prefix + record.prefix, value, nx=True))
        return bool(done)

    async def get(self, prefix: str) -> ApiKeyRecord | None:
        """Return the record for ``prefix``, or None."""
        check_text("prefix", prefix, MAX_PREFIX_CHARS)
        key = self._prefix + prefix
        raw = await self._call("lookup", lambda c: c.get(key))
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return ApiKeyRecord(
                prefix=prefix,
                owner=data["owner"],
                secret_hash=bytes.fromhex(data["secret_hash"]),
                scopes=tuple(data["scopes"]),
                name=data["name"],
                created_at=float(data["created_at"]),
                expires_at=data["expires_at"],
                last_used_at=data["last_used_at"],
                revoked=bool(data["revoked"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(key, exc) from exc

    async def update(self, record: ApiKeyRecord) -> bool:
        """Replace the record with the same prefix (a revoked one stays revoked); False if there is none."""
        check_api_key_record(record)
        args = [self._encode(record, revoked=record.revoked), self._encode(record, revoked=True)]
        script = self._script(_API_KEY_UPDATE_LUA)
        done = await self._call("update", lambda c: script(keys=[self._prefix + record.prefix], args=args))
        return bool(done)


class RedisRefreshTokenStore(_RedisStore):
    """A :class:`~mainspring.security.RefreshTokenStore` in Redis.

    A token is a hash at ``<prefix>t:<sha256 hex>`` expiring with the token; a family is a hash at
    ``<prefix>f:<family_id>`` (its revoked flag and latest expiry) expiring with its last token.
    :meth:`rotate` is one Lua script: the check, the retirement, the successor and, for a reused token,
    the family revocation happen in one step. Calls are bounded by ``timeout`` seconds; Redis errors
    raise :class:`ServiceUnavailableError`.
    """

    _feature = "the Redis refresh token store"

    def __init__(self, url: str, *, timeout: float = 1.0, key_prefix: str = "mainspring:refresh:") -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        super().__init__(url, timeout=timeout, key_prefix=key_prefix)

    def _token_key(self, token_hash: bytes) -> str:
        return f"{self._prefix}t:{token_hash.hex()}"

    def _family_key(self, family_id: str) -> str:
        return f"{self._prefix}f:{family_id}"

    async def add(self, record: RefreshTokenRecord) -> None:
        """Store a new record, expiring at its ``expires_at``."""
        check_refresh_record(record)
        family_exp = record.family_expires_at
        args = [
            record.family_id,
            record.subject,
            repr(record.issued_at),
            repr(record.expires_at),
            "" if family_exp is None else repr(family_exp),
            _ms(record.expires_at),
        ]
        keys = [self._token_key(record.token_hash), self._family_key(record.family_id)]
        script = self._script(_REFRESH_ADD_LUA)
        await self._call("add", lambda c: script(keys=keys, args=args))

    async def rotate(
        self, token_hash: bytes, successor: RefreshTokenRecord, now: float
    ) -> tuple[RotateOutcome, RefreshTokenRecord | None]:
        """Retire ``token_hash`` and store ``successor`` in one script; see the protocol."""
        check_sha256("token_hash", token_hash)
        check_sha256("successor.token_hash", successor.token_hash)
        check_number("successor.issued_at", successor.issued_at)
        check_number("successor.expires_at", successor.expires_at)
        check_number("now", now)
        args = [
            self._family_key(""),
            repr(float(now)),
            self._token_key(successor.token_hash),
            repr(successor.issued_at),
            repr(successor.expires_at),
            _ms(successor.expires_at),
        ]
        script = self._script(_REFRESH_ROTATE_LUA)
        reply = await self._call("rotate", lambda c: script(keys=[self._token_key(token_hash)], args=args))
        outcome = RotateOutcome(_text(reply[0]))
        if outcome is RotateOutcome.UNKNOWN:
            return outcome, None
        family, subject, issued_at, expires_at, family_exp, used = (_text(v) for v in reply[1:7])
        record = RefreshTokenRecord(
            token_hash=successor.token_hash if outcome is RotateOutcome.ROTATED else token_hash,
            family_id=family,
            subject=subject,
            issued_at=float(issued_at),
            expires_at=float(expires_at),
            family_expires_at=float(family_exp) if family_exp else None,
            used=used == "1",
        )
        return outcome, record

    async def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id``; the marker lives as long as the family's last token."""
        check_text("family_id", family_id, MAX_ID_CHARS)
        script = self._script(_REFRESH_REVOKE_LUA)
        await self._call("revoke", lambda c: script(keys=[self._family_key(family_id)], args=[]))

    async def is_family_revoked(self, family_id: str) -> bool:
        """Return True if ``family_id`` was revoked and still has tokens that could be presented."""
        check_text("family_id", family_id, MAX_ID_CHARS)
        key = self._family_key(family_id)
        flag = await self._call("lookup", lambda c: c.hget(key, "revoked"))
        return _text(flag) == "1"


class RedisTotpReplayStore(_RedisStore):
    """A :class:`~mainspring.security.TotpReplayStore` in Redis: the last accepted step per key.

    :meth:`claim` is one script comparing and setting the step with the window as its TTL (a plain
    ``SET NX`` per step would let an older step through after a newer one was accepted). Calls are
    bounded by ``timeout`` seconds; Redis errors raise :class:`ServiceUnavailableError`.
    """

    _feature = "the Redis TOTP replay store"

    def __init__(
        self, url: str, *, timeout: float = 1.0, key_prefix: str = "mainspring:totp-replay:"
    ) -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        super().__init__(url, timeout=timeout, key_prefix=key_prefix)

    async def claim(self, key: str, step: int, *, ttl: float) -> bool:
        """Record ``step`` for ``key`` if it is later than the stored step; return whether it was."""
        check_text("key", key, MAX_KEY_CHARS)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValidationError(f"TOTP step must be a non-negative int, got {step!r}")
        if check_number("ttl", ttl) is None or ttl <= 0:
            raise ValidationError(f"TOTP replay ttl must be positive seconds, got {ttl!r}")
        script = self._script(_TOTP_CLAIM_LUA)
        done = await self._call("claim", lambda c: script(keys=[self._prefix + key], args=[step, _ms(ttl)]))
        return bool(done)


class RedisRecoveryCodeStore(_RedisStore):
    """A :class:`~mainspring.security.RecoveryCodeStore` in Redis: one set of hashes per user.

    ``consume`` is ``SREM``, so of concurrent uses of one code exactly one removes it; ``replace`` is
    ``DEL`` + ``SADD`` in one ``MULTI``. Sets do not expire. Calls are bounded by ``timeout`` seconds;
    Redis errors raise :class:`ServiceUnavailableError`.
    """

    _feature = "the Redis recovery code store"

    def __init__(self, url: str, *, timeout: float = 1.0, key_prefix: str = "mainspring:recovery:") -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        super().__init__(url, timeout=timeout, key_prefix=key_prefix)

    async def replace(self, user_id: str, hashes: Sequence[str]) -> None:
        """Replace every stored hash of ``user_id`` with ``hashes`` atomically."""
        check_text("user_id", user_id, MAX_ID_CHARS)
        unique = check_code_hashes(hashes)
        key = self._prefix + user_id

        async def run(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if unique:
                    pipe.sadd(key, *unique)
                await pipe.execute()

        await self._call("replace", run)

    async def hashes(self, user_id: str) -> list[str]:
        """Return the stored hashes of ``user_id`` (empty when none), in no particular order."""
        check_text("user_id", user_id, MAX_ID_CHARS)
        key = self._prefix + user_id
        members = await self._call("lookup", lambda c: c.smembers(key))
        return [_text(m) for m in members]

    async def consume(self, user_id: str, hashed: str) -> bool:
        """Remove ``hashed`` from ``user_id``'s hashes (``SREM``); return whether it was there."""
        check_text("user_id", user_id, MAX_ID_CHARS)
        if not isinstance(hashed, str):
            raise ValidationError(f"recovery code hash must be a str, got {type(hashed).__name__}")
        key = self._prefix + user_id
        removed = await self._call("consume", lambda c: c.srem(key, hashed))
        return bool(removed)
