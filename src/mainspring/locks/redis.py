"""The Redis lock backend (``redis://``, ``rediss://``; extra ``redis``): SET NX PX plus Lua scripts.

Per lock name two keys share one hash slot: ``<prefix>{name}`` holds ``<owner>:<token>`` with the ttl,
``<prefix>{name}:fence`` the fencing counter (no expiry, so tokens never go back). One script takes the
lock and increments the counter together; release and extend compare the stored value with ours
before deleting or re-expiring it, so a holder whose lock expired cannot touch its successor's.

The acquire script is idempotent for one attempt (a retry after a lost reply finds its own value and
returns the same token), so the client may retry it after a dropped connection. A retried release
whose first try did get through reads as "no longer held" - the one case where ``release()`` reports
``False`` for a lock that was in fact ours.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.errors import ConfigError, ConfigProblem, ServiceUnavailableError
from mainspring.locks.base import Grant, LockBackend

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisLockBackend"]

# KEYS: lock, fence. ARGV: owner, ttl ms. Returns the token, or 0 when someone else holds the lock.
_ACQUIRE = """
local current = redis.call('get', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, 1, sep - 1) == ARGV[1] then
    return tonumber(string.sub(current, sep + 1))
  end
  return 0
end
local token = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lock. ARGV: our value. Returns 1 if it was ours and is gone now, else 0.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# KEYS: lock. ARGV: our value, ttl ms. Returns 1 if it was ours and has the new ttl, else 0.
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisLockBackend(LockBackend[str]):
    """Locks in Redis through ``redis.asyncio``; the handle of a grant is the stored ``owner:token``."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    options: ClassVar[frozenset[str]] = frozenset({"timeout", "connect_timeout", "key_prefix"})

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        key_prefix: str = "mainspring:lock:",
    ) -> None:
        """Remember where and how to connect; the client is made in :meth:`start`.

        ``timeout`` bounds each operation (retries included), ``connect_timeout`` the start-up ping.
        """
        problems = [
            ConfigProblem(field, "must be a number of seconds > 0", repr(value))
            for field, value in (("timeout", timeout), ("connect_timeout", connect_timeout))
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ]
        if not isinstance(key_prefix, str):
            problems.append(ConfigProblem("key_prefix", "must be a string", repr(key_prefix)))
        if problems:
            raise ConfigError("invalid options for the redis lock backend", problems=problems)
        # Imported here, not at start(): a missing extra or a malformed URL is a configuration error
        # better reported when the service is assembled.
        connection = require("redis.asyncio.connection", extra="redis", feature="the Redis lock backend")
        self._errors = require("redis.exceptions", extra="redis", feature="the Redis lock backend")
        try:
            connection.parse_url(url)
        except ValueError as exc:
            raise ConfigError(
                "invalid redis URL for the lock backend",
                problems=[ConfigProblem("url", mask_url_password(str(exc)), mask_url_password(url))],
            ) from None
        self._dsn = url
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._prefix = key_prefix
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLockBackend:
        """Build the backend for a ``redis://`` or ``rediss://`` URL."""
        return cls(url, **options)

    @property
    def url(self) -> str:
        """The Redis URL with its password masked."""
        return mask_url_password(self._dsn)

    async def start(self) -> None:
        """Make the client and check that Redis answers within ``connect_timeout``."""
        if self._client is not None:
            return
        redis = require("redis.asyncio", extra="redis", feature="the Redis lock backend")
        retry = require("redis.asyncio.retry", extra="redis", feature="the Redis lock backend")
        backoff = require("redis.backoff", extra="redis", feature="the Redis lock backend")
        client: Redis = redis.Redis.from_url(
            self._dsn,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._connect_timeout,
            client_name="mainspring-locks",
            # Short retries after a dropped connection (the scripts are safe to repeat); the default
            # backoff would sleep for seconds, past any sensible operation timeout.
            retry=retry.Retry(backoff.ExponentialWithJitterBackoff(cap=0.2, base=0.01), 2),
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await client.ping()
        except (self._errors.RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            self._unavailable("connect", exc)
        except BaseException:
            await client.aclose()
            raise
        self._scripts = {
            "acquire": client.register_script(_ACQUIRE),
            "release": client.register_script(_RELEASE),
            "extend": client.register_script(_EXTEND),
        }
        self._client = client

    async def stop(self) -> None:
        """Close the client's connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _keys(self, name: str) -> tuple[str, str]:
        # The braces make both keys hash to one slot, which a Redis Cluster needs for one script.
        lock = f"{self._prefix}{{{name}}}"
        return lock, f"{lock}:fence"

    def _unavailable(self, operation: str, exc: BaseException) -> NoReturn:
        detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise ServiceUnavailableError(
            f"redis lock backend at {self.url}: {operation} failed ({detail}); check that Redis is "
            f"reachable (timeout {self._timeout:g} s)",
            details={"backend": "redis", "operation": operation},
        ) from exc

    async def _run(self, script: str, operation: str, keys: list[str], args: list[str | int]) -> int:
        if self._client is None:
            raise ServiceUnavailableError(
                "the redis lock backend is not started: call 'await manager.start()' or use 'async with'"
            )
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._scripts[script](keys=keys, args=args)
        except (self._errors.RedisError, OSError, TimeoutError) as exc:
            self._unavailable(operation, exc)
        return int(result)

    async def try_acquire(self, name: str, ttl: float) -> Grant[str] | None:
        """Run the acquire script once with a fresh owner id."""
        owner = secrets.token_hex(12)
        since = time.monotonic()
        token = await self._run(
            "acquire", f"acquire lock {name!r}", list(self._keys(name)), [owner, _milliseconds(ttl)]
        )
        if token == 0:
            return None
        return Grant(name, token, f"{owner}:{token}", since)

    async def extend(self, grant: Grant[str], ttl: float) -> bool:
        """Compare-and-pexpire: only our own value gets the new ttl."""
        lock, _fence = self._keys(grant.name)
        done = await self._run(
            "extend", f"extend lock {grant.name!r}", [lock], [grant.handle, _milliseconds(ttl)]
        )
        return done == 1

    async def release(self, grant: Grant[str]) -> bool:
        """Compare-and-delete: only our own value is deleted."""
        lock, _fence = self._keys(grant.name)
        return await self._run("release", f"release lock {grant.name!r}", [lock], [grant.handle]) == 1
