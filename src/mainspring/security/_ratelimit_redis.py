"""The Redis rate-limit backend: one Lua script per strategy, one EVALSHA per decision.

Each script reads the Redis server clock (``TIME``), so every process sharing the Redis agrees on the
windows whatever its own clock says. Times are microseconds, like the memory backend; the formulas are
the same (GCRA uses floating-point microseconds here, where the memory backend scales by ``rate``).
State is one string per key ("window count [previous]", or the GCRA timestamp): one GET and at most
one SET with an expiry per decision. Scripts reply with one string of four integers ("allowed remaining
reset_us retry_us"): redis-py's pure-Python parser reads one bulk string much faster than a
four-element array, and Redis would truncate Lua numbers in replies anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from mainspring._compat import require
from mainspring.errors import ServiceUnavailableError
from mainspring.security._ratelimit_types import Decision, Limit, Strategy

__all__ = ["RateLimitBackendError", "RedisBackend"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
"""

FIXED_WINDOW_LUA = (
    _NOW
    + """
local window = math.floor(now / per)
local count = 0
local v = redis.call('GET', KEYS[1])
if v then
  local w, c = string.match(v, '^(%d+) (%d+)$')
  if tonumber(w) == window then count = tonumber(c) end
end
local allowed = 0
local left = (window + 1) * per - now
if count < rate then
  allowed = 1
  count = count + 1
  redis.call('SET', KEYS[1], string.format('%.0f %.0f', window, count), 'PX', math.ceil(left / 1000))
end
return string.format("%d %.0f %.0f %.0f", allowed, rate - count, left, left)
"""
)

SLIDING_WINDOW_LUA = (
    _NOW
    + """
local window = math.floor(now / per)
local cur, prev = 0, 0
local v = redis.call('GET', KEYS[1])
if v then
  local w, c, p = string.match(v, '^(%d+) (%d+) (%d+)$')
  w = tonumber(w)
  if w == window then
    cur = tonumber(c); prev = tonumber(p)
  elseif w == window - 1 then
    prev = tonumber(c)
  end
end
local elapsed = now - window * per
local weight = per - elapsed
local allowed = 0
if prev * weight + (cur + 1) * per <= rate * per then
  allowed = 1
  cur = cur + 1
  local ttl = math.ceil(((window + 2) * per - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f %.0f %.0f', window, cur, prev), 'PX', ttl)
end
local finish = (window + 1) * per
local remaining = math.floor((rate * per - prev * weight - cur * per) / per)
local reset = 0
if cur > 0 then reset = finish - now + per elseif prev > 0 then reset = finish - now end
local retry = 0
if allowed == 0 then
  if cur + 1 <= rate then
    retry = per - math.floor((rate - cur - 1) * per / prev) - elapsed
  else
    retry = finish - now + per - math.floor((rate - 1) * per / cur)
  end
end
return string.format("%d %.0f %.0f %.0f", allowed, remaining, reset, retry)
"""
)

GCRA_LUA = (
    _NOW
    + """
local burst = tonumber(ARGV[3])
local interval = per / rate
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
local allowed = 0
if now >= allow_at then
  allowed = 1
  tat = new_tat
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000))
end
-- The epsilon absorbs float error: (burst - 1) must not come out as burst - 1.0000001 floored.
local remaining = math.floor((now - tat) / interval + burst + 1e-6)
return string.format("%d %.0f %.0f %.0f", allowed, remaining, math.ceil(tat - now), math.ceil(allow_at - now))
"""
)

_SCRIPTS: dict[Strategy, str] = {
    Strategy.FIXED_WINDOW: FIXED_WINDOW_LUA,
    Strategy.SLIDING_WINDOW: SLIDING_WINDOW_LUA,
    Strategy.GCRA: GCRA_LUA,
}
_SHAS: dict[Strategy, str] = {
    strategy: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for strategy, script in _SCRIPTS.items()
}
_US = 1_000_000
_NOT_STARTED = "the Redis rate limiter is not started: call await start() or use async with"


class RateLimitBackendError(ServiceUnavailableError):
    """The rate-limit store could not answer (unreachable, slow or erroring)."""

    code = "rate_limit_backend_unavailable"


class RedisBackend:
    """Rate-limit state in Redis, decided atomically by server-side scripts.

    Every call is bounded by ``timeout`` seconds (socket timeouts and an overall deadline); driver
    errors come out as :class:`RateLimitBackendError`.
    """

    def __init__(self, url: str, *, timeout: float, max_connections: int = 50) -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        self._url = url
        self._timeout = timeout
        self._max_connections = max_connections
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._no_script: type[BaseException] = LookupError
        # Callers beyond the pool size queue here (within the deadline) instead of failing with
        # "too many connections"; redis-py's BlockingConnectionPool does the same but costs a task per call.
        self._slots = asyncio.Semaphore(max_connections)

    async def start(self) -> None:
        """Create the client; the connection opens on first use, so a down Redis doesn't block start."""
        if self._client is not None:
            return
        redis = require("redis", extra="redis", feature="the Redis rate-limit backend")
        asyncio_redis = require("redis.asyncio", extra="redis", feature="the Redis rate-limit backend")
        retry = require("redis.asyncio.retry", extra="redis", feature="the Redis rate-limit backend")
        backoff = require("redis.backoff", extra="redis", feature="the Redis rate-limit backend")
        self._errors = (redis.exceptions.RedisError, OSError, TimeoutError)
        self._no_script = redis.exceptions.NoScriptError
        pool = asyncio_redis.ConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            socket_connect_timeout=self._timeout,
            # No per-read socket timeout: the overall deadline in decide() bounds the whole call, and a
            # second timer per read costs throughput. Driver retries would only add latency.
            retry=retry.Retry(backoff.NoBackoff(), 0),
        )
        self._client = asyncio_redis.Redis.from_pool(pool)

    async def stop(self) -> None:
        """Close the client and its connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def decide(self, key: str, limit: Limit) -> Decision:
        """Run the strategy's script for ``key``: one EVALSHA (EVAL when the script isn't cached)."""
        client = self._client
        if client is None:
            raise RateLimitBackendError(
                "the Redis rate limiter is not started: call start() or use async with"
            )
        strategy = limit.strategy
        args = (limit.rate, limit.per_us, limit.capacity)
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                try:
                    raw = await client.evalsha(_SHAS[strategy], 1, key, *args)
                except self._no_script:
                    # EVAL caches the script too, so the next decision is an EVALSHA again.
                    raw = await client.eval(_SCRIPTS[strategy], 1, key, *args)
        except self._errors as exc:
            raise RateLimitBackendError(
                f"Redis rate-limit decision failed ({type(exc).__name__}); check that Redis is reachable",
                details={"error": type(exc).__name__},
            ) from exc
        allowed, remaining, reset_us, retry_us = map(int, raw.split())
        return Decision(
            allowed=bool(allowed),
            limit=limit.capacity,
            remaining=max(0, remaining),
            reset_after=max(0, reset_us) / _US,
            retry_after=0.0 if allowed else max(0, retry_us) / _US,
            window=limit.per,
        )

    async def reset(self, key: str) -> None:
        """Delete ``key``'s state."""
        client = self._client
        if client is None:
            raise RateLimitBackendError(
                "the Redis rate limiter is not started: call start() or use async with"
            )
        try:
            async with asyncio.timeout(self._timeout):
                await client.delete(key)
        except self._errors as exc:
            raise RateLimitBackendError(
                f"Redis rate-limit reset failed ({type(exc).__name__}); check that Redis is reachable",
                details={"error": type(exc).__name__},
            ) from exc
