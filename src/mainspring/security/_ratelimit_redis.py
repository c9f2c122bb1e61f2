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
_MAX_CACHED_LIMITS = 1024
_NOT_STARTED = "the Redis rate limiter is not started: call await start() or use async with"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command_parts(limit: Limit) -> tuple[bytes, bytes, bytes]:
    """RESP for EVALSHA/EVAL up to the key, and the arguments after it: only the key varies per call."""
    args = b"".join(_bulk(str(n).encode()) for n in (limit.rate, limit.per_us, limit.capacity))
    sha = _SHAS[limit.strategy].encode()
    script = _SCRIPTS[limit.strategy].encode()
    return (
        b"*7\r\n" + _bulk(b"EVALSHA") + _bulk(sha) + _bulk(b"1"),
        b"*7\r\n" + _bulk(b"EVAL") + _bulk(script) + _bulk(b"1"),
        args,
    )


class RateLimitBackendError(ServiceUnavailableError):
    """The rate-limit store could not answer (unreachable, slow or erroring)."""

    code = "rate_limit_backend_unavailable"


class RedisBackend:
    """Rate-limit state in Redis, decided atomically by server-side scripts.

    Every call is bounded by ``timeout`` seconds (one deadline over waiting for a connection, writing
    and reading); driver errors come out as :class:`RateLimitBackendError`.

    The hot path talks to redis-py's connections directly rather than through ``Redis.evalsha``: the
    command is pre-encoded per limit (only the key is encoded per call) and connections are kept on a
    plain stack instead of the pool's locked, instrumented checkout. redis-py still owns connecting,
    authentication, TLS and reply parsing. A connection whose exchange did not finish (error, timeout,
    cancellation) is disconnected by redis-py and reconnects on its next use, so a reply can never be
    read by the wrong caller.
    """

    def __init__(self, url: str, *, timeout: float, max_connections: int = 50) -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        self._url = url
        self._timeout = timeout
        self._max_connections = max_connections
        self._pool: Any = None
        self._idle: list[Any] = []
        self._connections: list[Any] = []
        self._commands: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._no_script: type[BaseException] = LookupError
        self._dropped: type[BaseException] = ConnectionError
        # Callers beyond the pool size queue here (within the deadline) instead of failing with
        # "too many connections".
        self._slots = asyncio.Semaphore(max_connections)

    async def start(self) -> None:
        """Prepare the connection factory; connections open on first use, so a down Redis doesn't block."""
        if self._pool is not None:
            return
        redis = require("redis", extra="redis", feature="the Redis rate-limit backend")
        asyncio_redis = require("redis.asyncio", extra="redis", feature="the Redis rate-limit backend")
        retry = require("redis.asyncio.retry", extra="redis", feature="the Redis rate-limit backend")
        backoff = require("redis.backoff", extra="redis", feature="the Redis rate-limit backend")
        self._errors = (redis.exceptions.RedisError, OSError, TimeoutError)
        self._no_script = redis.exceptions.NoScriptError
        self._dropped = redis.exceptions.ConnectionError
        # The pool only parses the URL and makes connections (make_connection); checkout is ours.
        self._pool = asyncio_redis.ConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            socket_connect_timeout=self._timeout,
            # No per-read/per-write socket timeout (redis-py 8 defaults to 5 s, one extra task per write
            # and a timer per read): the deadline in _call() bounds the whole exchange. Driver retries
            # would only add latency.
            socket_timeout=None,
            retry=retry.Retry(backoff.NoBackoff(), 0),
        )

    async def stop(self) -> None:
        """Close every connection."""
        connections, self._connections, self._idle, self._pool = self._connections, [], [], None
        for connection in connections:
            await connection.disconnect()

    async def _call(self, head: bytes, key: str, tail: bytes, retry_head: bytes | None = None) -> Any:
        """Send one command (``head``, the key, ``tail``) on a free connection and return the reply.

        With ``retry_head`` a NOSCRIPT reply is answered by resending with ``retry_head`` (EVAL, which
        caches the script again) on the same connection.
        """
        pool = self._pool
        if pool is None:
            raise RateLimitBackendError(_NOT_STARTED)
        encoded = key.encode()
        key_part = b"$%d\r\n%s\r\n" % (len(encoded), encoded)
        async with asyncio.timeout(self._timeout), self._slots:
            if self._pool is not pool:  # stopped while this call waited for a connection
                raise RateLimitBackendError(_NOT_STARTED)
            reused = False
            if self._idle:
                connection = self._idle.pop()
                # The server may have closed an idle connection (timeout, CLIENT KILL, restart): check
                # before sending, as redis-py's pool does, and reconnect instead of failing the call.
                if connection.is_connected:
                    try:
                        reused = not await connection.can_read()
                    except self._errors:
                        reused = False
                    if not reused:
                        await connection.disconnect()
            else:
                connection = pool.make_connection()
                self._connections.append(connection)
            try:
                try:
                    reply = await self._exchange(connection, head, key_part, tail, retry_head)
                except self._dropped:
                    if not reused:
                        raise
                    # Closed by the server after the check above: Redis drops a client between commands,
                    # so this one did not run. Once more, on a new connection (redis-py disconnected it).
                    reply = await self._exchange(connection, head, key_part, tail, retry_head)
            finally:
                # Back on the stack even after an error: redis-py disconnected it if the exchange broke,
                # and it reconnects on next use. After stop() it is not ours any more.
                if self._pool is pool:
                    self._idle.append(connection)
        return reply

    async def _exchange(
        self, connection: Any, head: bytes, key_part: bytes, tail: bytes, retry_head: bytes | None
    ) -> Any:
        await connection.send_packed_command(head + key_part + tail, check_health=False)
        try:
            return await connection.read_response()
        except self._no_script:
            if retry_head is None:
                raise
            await connection.send_packed_command(retry_head + key_part + tail, check_health=False)
            return await connection.read_response()

    async def decide(self, key: str, limit: Limit) -> Decision:
        """Run the strategy's script for ``key``: one EVALSHA (EVAL when the script isn't cached)."""
        parts = self._commands.get(limit.ident)
        if parts is None:
            if len(self._commands) >= _MAX_CACHED_LIMITS:  # limits made per request must not pile up
                self._commands.clear()
            parts = self._commands[limit.ident] = _command_parts(limit)
        try:
            raw = await self._call(parts[0], key, parts[2], parts[1])
        except self._errors as exc:
            raise RateLimitBackendError(
                f"Redis rate-limit decision failed ({type(exc).__name__}); check that Redis is reachable",
                details={"error": type(exc).__name__},
            ) from exc
        allowed, remaining, reset_us, retry_us = raw.split()
        if allowed == b"1":
            return Decision(
                True, limit.capacity, max(0, int(remaining)), max(0, int(reset_us)) / _US, 0.0, limit.per
            )
        return Decision(
            allowed=False,
            limit=limit.capacity,
            remaining=max(0, int(remaining)),
            reset_after=max(0, int(reset_us)) / _US,
            retry_after=max(0, int(retry_us)) / _US,
            window=limit.per,
        )

    async def reset(self, key: str) -> None:
        """Delete ``key``'s state."""
        try:
            await self._call(b"*2\r\n$3\r\nDEL\r\n", key, b"")
        except self._errors as exc:
            raise RateLimitBackendError(
                f"Redis rate-limit reset failed ({type(exc).__name__}); check that Redis is reachable",
                details={"error": type(exc).__name__},
            ) from exc
