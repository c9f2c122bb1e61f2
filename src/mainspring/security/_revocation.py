"""Revocation of access tokens by ``jti``, remembered only until the token would have expired anyway.

A JWT past its ``exp`` is already refused by verification, so an entry needs to outlive it by nothing:
Redis keys carry ``EXAT exp`` and memory entries are dropped once ``exp`` passes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

from mainspring._compat import require
from mainspring._lifecycle import AsyncLifecycle
from mainspring.errors import ServiceUnavailableError, ValidationError

__all__ = ["MemoryRevocationList", "RedisRevocationList", "RevocationList"]

_FEATURE: Final = "the Redis revocation list"


def _check_jti(jti: str) -> None:
    if not isinstance(jti, str) or not jti:
        raise ValidationError("token revocation needs a non-empty 'jti' string")


@runtime_checkable
class RevocationList(Protocol):
    """Remembers revoked token ids (``jti``) until their expiry."""

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Mark ``jti`` revoked until ``expires_at`` (Unix seconds, the token's ``exp``)."""
        ...

    async def is_revoked(self, jti: str) -> bool:
        """Return True if ``jti`` was revoked and its token has not expired yet."""
        ...


class MemoryRevocationList:
    """An in-process :class:`RevocationList` for tests and single-process services.

    Expired entries are purged lazily on each call, so memory stays bounded by live revocations.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        """Start empty; ``clock`` returns Unix seconds (tests pass a fake one)."""
        self._clock = clock
        self._entries: dict[str, float] = {}

    def _purge(self, now: float) -> None:
        expired = [jti for jti, exp in self._entries.items() if exp <= now]
        for jti in expired:
            del self._entries[jti]

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Mark ``jti`` revoked until ``expires_at``; an already expired token needs no entry."""
        _check_jti(jti)
        now = self._clock()
        self._purge(now)
        if expires_at > now:
            self._entries[jti] = max(expires_at, self._entries.get(jti, expires_at))

    async def is_revoked(self, jti: str) -> bool:
        """Return True while ``jti`` is revoked and unexpired."""
        _check_jti(jti)
        exp = self._entries.get(jti)
        return exp is not None and exp > self._clock()

    def __len__(self) -> int:
        """Return the number of entries, expired ones not yet purged included."""
        return len(self._entries)


class RedisRevocationList(AsyncLifecycle):
    """A :class:`RevocationList` in Redis: one key per ``jti`` that Redis deletes at the token's ``exp``.

    Nothing connects until :meth:`start` (or ``async with``). Every call is bounded by ``timeout``
    seconds; a Redis that is down, slow or erroring raises :class:`ServiceUnavailableError`, never a
    "not revoked" answer, so callers fail closed unless they choose otherwise.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        key_prefix: str = "mainspring:revoked:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        if timeout <= 0:
            raise ValidationError(f"revocation list timeout must be positive seconds, got {timeout!r}")
        self._url = url
        self._timeout = timeout
        self._prefix = key_prefix
        self._clock = clock
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    async def start(self) -> None:
        """Create the client; the connection opens on first use, so a down Redis doesn't block start."""
        if self._client is not None:
            return
        redis = require("redis", extra="redis", feature=_FEATURE)
        asyncio_redis = require("redis.asyncio", extra="redis", feature=_FEATURE)
        self._errors = (redis.exceptions.RedisError, OSError, TimeoutError)
        self._client = asyncio_redis.Redis.from_url(
            self._url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
        )

    async def stop(self) -> None:
        """Close the client and its connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise ServiceUnavailableError(
                "the Redis revocation list is not started: call start() or use async with"
            )
        return self._client

    def _unavailable(self, action: str, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Redis revocation {action} failed ({type(exc).__name__}); check that Redis is reachable",
            details={"error": type(exc).__name__},
        )

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Store ``jti`` with ``EXAT`` at ``expires_at`` (rounded up); skip tokens already expired."""
        _check_jti(jti)
        client = self._require_client()
        exat = math.ceil(expires_at)
        if exat <= self._clock():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await client.set(self._prefix + jti, b"1", exat=exat)
        except self._errors as exc:
            raise self._unavailable("write", exc) from exc

    async def is_revoked(self, jti: str) -> bool:
        """Return True if Redis still holds ``jti``."""
        _check_jti(jti)
        client = self._require_client()
        try:
            async with asyncio.timeout(self._timeout):
                found = await client.exists(self._prefix + jti)
        except self._errors as exc:
            raise self._unavailable("lookup", exc) from exc
        return bool(found)
