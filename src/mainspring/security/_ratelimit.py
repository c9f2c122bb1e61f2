"""The :class:`RateLimiter` front end: backend by URL, fail-open/closed policy, key builders, counters."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from mainspring._lifecycle import AsyncLifecycle
from mainspring.config._safety import mask_url_password
from mainspring.context import Principal, get_context
from mainspring.errors import RateLimitedError, ValidationError
from mainspring.logging import get_logger
from mainspring.security._ratelimit_memory import MemoryBackend, wall_clock_us
from mainspring.security._ratelimit_redis import RateLimitBackendError, RedisBackend
from mainspring.security._ratelimit_types import Decision, Limit

__all__ = [
    "RateLimitBackendError",
    "RateLimitKey",
    "RateLimiter",
    "RateLimiterStats",
]

log = get_logger("mainspring.security.ratelimit")
_NOT_STARTED = "the rate limiter is not started: call await start() or use async with"


class _Backend(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def decide(self, key: str, limit: Limit) -> Decision: ...
    async def reset(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of a limiter's counters."""

    allowed: int
    denied: int
    backend_errors: int
    failed_open: int
    failed_closed: int


def _part(value: str) -> str:
    # Percent-encoding ':' (and '%') keeps parts from running into each other: "a:b"+"c" != "a"+"b:c".
    return quote(value, safe="")


class RateLimitKey:
    """Builders for rate-limit keys: namespaced, readable, collision-free strings (never ``hash()``).

    Each returns ``"<scope>:<kind>:<value>"``; ``scope`` names what is limited (``"login"``,
    ``"api"``), so one client has separate budgets per scope.
    """

    @staticmethod
    def ip(address: str, *, scope: str = "global", ipv6_prefix: int = 64) -> str:
        """Key by client IP; IPv6 addresses are grouped by ``ipv6_prefix`` (a client usually owns a /64)."""
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ValidationError(
                f"rate-limit key: {address[:64]!r} is not an IP address",
                errors=[{"loc": ["address"], "msg": "not an IP address"}],
            ) from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            text = str(ip.ipv4_mapped)
        elif isinstance(ip, ipaddress.IPv6Address):
            text = str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
        else:
            text = str(ip)
        return f"{_part(scope)}:ip:{_part(text)}"

    @staticmethod
    def principal(principal: Principal | str | None = None, *, scope: str = "global") -> str:
        """Key by principal (its tenant and id); defaults to the principal in the current context."""
        if principal is None:
            principal = get_context().principal
            if principal is None:
                raise ValidationError(
                    "rate-limit key by principal: no principal in the current context; authenticate first "
                    "or key by IP",
                    errors=[{"loc": ["principal"], "msg": "missing"}],
                )
        if isinstance(principal, str):
            return f"{_part(scope)}:principal:{_part(principal)}"
        tenant = principal.tenant or ""
        return f"{_part(scope)}:principal:{_part(principal.kind)}:{_part(tenant)}:{_part(principal.id)}"

    @staticmethod
    def api_key(key_or_prefix: str, *, scope: str = "global") -> str:
        """Key by API key: the public prefix of an ``msk_<prefix>_<secret>`` key, never the secret."""
        parts = key_or_prefix.split("_")
        prefix = parts[1] if len(parts) >= 3 and parts[0] == "msk" else key_or_prefix
        if (len(parts) >= 3 and parts[0] != "msk") or not prefix:
            raise ValidationError(
                "rate-limit key by API key: pass the key's prefix or a whole 'msk_<prefix>_<secret>' key",
                errors=[{"loc": ["api_key"], "msg": "not an API key or prefix"}],
            )
        return f"{_part(scope)}:apikey:{_part(prefix)}"

    @staticmethod
    def route(method: str, path: str, *, by: str | None = None, scope: str = "global") -> str:
        """Key by route (method and path template, e.g. ``"/orders/{id}"``), optionally per client ``by``."""
        key = f"{_part(scope)}:route:{_part(method.upper())}:{_part(path)}"
        return key if by is None else f"{key}:{_part(by)}"


class RateLimiter(AsyncLifecycle):
    """Decides whether a request under a :class:`Limit` may proceed, on a ``memory://`` or ``redis://`` store.

    ``hit(key, limit)`` counts and returns a :class:`Decision`; ``check(key, limit)`` does the same and
    raises :class:`RateLimitedError` (429, with ``retry_after``) when denied. When the store fails or
    takes longer than ``timeout`` seconds, the limit's policy decides: ``Limit.fail_open`` if set, else
    fail closed for ``auth=True`` limits and ``fail_open`` (the limiter default) for others. Failures are
    logged (once per outage, and on recovery) and counted. Nothing connects before :meth:`start`.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        prefix: str = "mainspring:rl",
        timeout: float = 0.25,
        fail_open: bool = True,
        max_connections: int = 50,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """Configure the limiter.

        ``timeout`` bounds every backend call (seconds); ``max_connections`` caps the Redis pool (callers
        beyond it wait for a connection, within the timeout); ``clock`` (integer microseconds) is for the
        memory backend's tests.
        """
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValidationError(
                f"rate limiter timeout must be a positive number of seconds, got {timeout!r}",
                errors=[{"loc": ["timeout"], "msg": "must be > 0"}],
            )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValidationError(
                f"rate limiter max_connections must be a whole number >= 1, got {max_connections!r}",
                errors=[{"loc": ["max_connections"], "msg": "must be >= 1"}],
            )
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        self._backend: _Backend
        if scheme == "memory":
            self._backend = MemoryBackend(clock=clock or wall_clock_us)
        elif scheme in ("redis", "rediss", "unix"):
            if clock is not None:
                raise ValidationError(
                    "the Redis rate limiter uses the Redis server clock; clock= is for memory:// only",
                    errors=[{"loc": ["clock"], "msg": "not supported for redis"}],
                )
            self._backend = RedisBackend(url, timeout=timeout, max_connections=max_connections)
        else:
            raise ValidationError(
                f"rate limiter URL {mask_url_password(url)!r} is not supported: use memory:// or redis://",
                errors=[{"loc": ["url"], "msg": "unsupported scheme"}],
            )
        self.url = mask_url_password(url)
        self._prefix = prefix
        self._default_fail_open = fail_open
        self._started = False
        self._failing = False
        self._allowed = self._denied = self._errors = self._failed_open = self._failed_closed = 0

    async def start(self) -> None:
        """Prepare the backend (the Redis connection opens lazily on the first decision)."""
        await self._backend.start()
        self._started = True

    async def stop(self) -> None:
        """Close the backend's connections."""
        self._started = False
        await self._backend.stop()

    @property
    def stats(self) -> RateLimiterStats:
        """Counters since creation: decisions allowed/denied, backend errors, fail-open/closed outcomes."""
        return RateLimiterStats(
            self._allowed, self._denied, self._errors, self._failed_open, self._failed_closed
        )

    def storage_key(self, key: str, limit: Limit) -> str:
        """The backend key for ``key`` under ``limit``: prefix, strategy and parameters, then ``key``."""
        return f"{self._prefix}:{limit.ident}:{key}"

    async def hit(self, key: str, limit: Limit) -> Decision:
        """Count one request for ``key`` under ``limit``; return the decision (never raises when denied)."""
        if not self._started:
            raise RateLimitBackendError(
                "the rate limiter is not started: call await start() or use async with"
            )
        try:
            # storage_key() inlined: this is the hot path.
            decision = await self._backend.decide(f"{self._prefix}:{limit.ident}:{key}", limit)
        except RateLimitBackendError as exc:
            decision = self._degraded(limit, exc)
        else:
            if self._failing:
                self._failing = False
                log.info("rate_limit_backend_recovered", url=self.url)
        if decision.allowed:
            self._allowed += 1
        else:
            self._denied += 1
        return decision

    async def check(self, key: str, limit: Limit) -> Decision:
        """Count one request; raise :class:`RateLimitedError` (429) with ``retry_after`` when denied."""
        decision = await self.hit(key, limit)
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after))
            reason = (
                "the rate-limit store is unavailable and this limit fails closed"
                if decision.degraded
                else f"rate limit of {limit.rate} per {limit.per:g} s exceeded"
            )
            raise RateLimitedError(
                f"{reason}; retry in {wait} s",
                retry_after=decision.retry_after,
                details={"limit": decision.limit, "window": limit.per, "degraded": decision.degraded},
            )
        return decision

    async def reset(self, key: str, limit: Limit) -> None:
        """Forget the state of ``key`` under ``limit`` (after a successful login, say)."""
        await self._backend.reset(self.storage_key(key, limit))

    def _degraded(self, limit: Limit, exc: RateLimitBackendError) -> Decision:
        self._errors += 1
        fail_open = (
            limit.fail_open if limit.fail_open is not None else (not limit.auth and self._default_fail_open)
        )
        if fail_open:
            self._failed_open += 1
        else:
            self._failed_closed += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "rate_limit_backend_failed",
                url=self.url,
                error=exc.message,
                policy="fail_open" if fail_open else "fail_closed",
            )
        if fail_open:
            return Decision(True, limit.capacity, limit.capacity, 0.0, 0.0, limit.per, degraded=True)
        # Denied for one window's worth of an emission interval: long enough not to hammer a down store.
        retry = max(1.0, limit.per / limit.rate)
        return Decision(False, limit.capacity, 0, retry, retry, limit.per, degraded=True)
