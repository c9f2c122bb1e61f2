"""Opaque refresh tokens, rotated on every use, with reuse detection that revokes the whole family.

A login starts a *family*; each :meth:`RefreshTokenService.rotate` retires the presented token and
issues its successor in the same family. A retired token presented again means two parties hold the
same family (a stolen token, or a client that refreshed twice), and nobody can tell which one is
legitimate, so the whole family is revoked and both must log in again.

Tokens are 256 random bits and stored only as SHA-256 hashes: a fast hash is enough for a secret that
cannot be guessed, and a database dump then yields nothing usable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from mainspring.errors import AuthenticationError, ValidationError

__all__ = [
    "IssuedRefreshToken",
    "MemoryRefreshTokenStore",
    "RefreshTokenRecord",
    "RefreshTokenService",
    "RefreshTokenStore",
    "RotateOutcome",
]

_TOKEN_BYTES: Final = 32
# token_urlsafe(32) is 43 characters; anything far longer is not ours and is not worth hashing.
_MAX_TOKEN_CHARS: Final = 256
_DEFAULT_TTL: Final = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """What is stored about one refresh token: its SHA-256, never the token."""

    token_hash: bytes
    family_id: str
    subject: str
    issued_at: float
    expires_at: float
    family_expires_at: float | None = None
    used: bool = False

    def __repr__(self) -> str:
        return (
            f"RefreshTokenRecord(family_id={self.family_id!r}, subject={self.subject!r}, "
            f"expires_at={self.expires_at!r}, used={self.used!r})"
        )


@dataclass(frozen=True, slots=True)
class IssuedRefreshToken:
    """A new refresh token: hand ``token`` to the client; it is not stored anywhere in clear."""

    token: str
    family_id: str
    subject: str
    expires_at: float

    def __repr__(self) -> str:
        return (
            f"IssuedRefreshToken(family_id={self.family_id!r}, subject={self.subject!r}, "
            f"expires_at={self.expires_at!r}, token='***')"
        )


class RotateOutcome(enum.Enum):
    """What a store found when asked to rotate a token."""

    ROTATED = "rotated"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    REUSED = "reused"
    EXPIRED = "expired"


@runtime_checkable
class RefreshTokenStore(Protocol):
    """Where refresh token records live.

    :meth:`rotate` must be atomic: of two concurrent rotations of one token, exactly one may see it
    unused. A database store does it in one transaction (``SELECT ... FOR UPDATE``), Redis in one script.
    """

    async def add(self, record: RefreshTokenRecord) -> None:
        """Store a new record (the first token of a family)."""
        ...

    async def rotate(
        self, token_hash: bytes, successor: RefreshTokenRecord, now: float
    ) -> tuple[RotateOutcome, RefreshTokenRecord | None]:
        """Atomically retire ``token_hash`` and store ``successor`` if the token is live.

        ``successor`` carries a placeholder family and subject; the store copies both (and the family
        deadline, capping the successor's expiry) from the retired record. Returns the outcome and the
        record found (the stored successor on success). A reused token revokes its family before
        returning ``REUSED``.
        """
        ...

    async def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id``, present and future."""
        ...


class MemoryRefreshTokenStore:
    """An in-process :class:`RefreshTokenStore` for tests and single-process services."""

    def __init__(self) -> None:
        """Start empty."""
        self._records: dict[bytes, RefreshTokenRecord] = {}
        self._revoked_families: dict[str, float] = {}
        # Every step of rotate() is synchronous today, but the lock keeps the check-and-set atomic if a
        # subclass (or a future change) awaits in between.
        self._lock = asyncio.Lock()
        self._purge_at = 1024

    def _purge(self, now: float) -> None:
        # Amortised: a full sweep only when the table doubled since the last one.
        if len(self._records) < self._purge_at:
            return
        self._records = {h: r for h, r in self._records.items() if r.expires_at > now}
        self._revoked_families = {f: exp for f, exp in self._revoked_families.items() if exp > now}
        self._purge_at = max(1024, 2 * len(self._records))

    async def add(self, record: RefreshTokenRecord) -> None:
        """Store a new record."""
        async with self._lock:
            self._purge(record.issued_at)
            self._records[record.token_hash] = record

    async def rotate(
        self, token_hash: bytes, successor: RefreshTokenRecord, now: float
    ) -> tuple[RotateOutcome, RefreshTokenRecord | None]:
        """Retire ``token_hash`` and store ``successor`` in one locked step."""
        async with self._lock:
            record = self._records.get(token_hash)
            if record is None:
                return RotateOutcome.UNKNOWN, None
            if record.family_id in self._revoked_families:
                return RotateOutcome.REVOKED, record
            if record.used:
                self._revoke(record.family_id, now)
                return RotateOutcome.REUSED, record
            if record.expires_at <= now:
                return RotateOutcome.EXPIRED, record
            self._records[token_hash] = dataclasses.replace(record, used=True)
            stored = _succeed(record, successor)
            self._records[stored.token_hash] = stored
            return RotateOutcome.ROTATED, stored

    def _revoke(self, family_id: str, now: float) -> None:
        # Remember the revocation as long as any token of the family could still be presented.
        horizon = max((r.expires_at for r in self._records.values() if r.family_id == family_id), default=now)
        self._revoked_families[family_id] = max(horizon, self._revoked_families.get(family_id, horizon))

    async def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id``."""
        async with self._lock:
            self._revoke(family_id, time.time())

    async def is_family_revoked(self, family_id: str) -> bool:
        """Return True if ``family_id`` was revoked (for tests and admin tools)."""
        return family_id in self._revoked_families


def _succeed(record: RefreshTokenRecord, successor: RefreshTokenRecord) -> RefreshTokenRecord:
    """Return ``successor`` placed in ``record``'s family, its expiry capped by the family deadline."""
    expires_at = successor.expires_at
    if record.family_expires_at is not None:
        expires_at = min(expires_at, record.family_expires_at)
    return dataclasses.replace(
        successor,
        family_id=record.family_id,
        subject=record.subject,
        family_expires_at=record.family_expires_at,
        expires_at=expires_at,
    )


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


class RefreshTokenService:
    """Issues refresh tokens and rotates them, revoking a family when a retired token comes back.

    ``ttl`` is the lifetime of each token (seconds); ``family_ttl``, if set, caps the whole chain from
    login, so rotation cannot keep a session alive forever. ``clock`` returns Unix seconds.
    """

    def __init__(
        self,
        store: RefreshTokenStore,
        *,
        ttl: float = _DEFAULT_TTL,
        family_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Use ``store`` for records; nothing is stored until :meth:`issue`."""
        if ttl <= 0:
            raise ValidationError(f"refresh token ttl must be positive seconds, got {ttl!r}")
        if family_ttl is not None and family_ttl <= 0:
            raise ValidationError(f"refresh token family_ttl must be positive seconds, got {family_ttl!r}")
        self._store = store
        self._ttl = ttl
        self._family_ttl = family_ttl
        self._clock = clock

    async def issue(self, subject: str) -> IssuedRefreshToken:
        """Start a new family for ``subject`` (at login) and return its first token."""
        if not subject:
            raise ValidationError("refresh token subject must not be empty: pass the user or service id")
        now = self._clock()
        family_id = secrets.token_urlsafe(16)
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        family_expires_at = None if self._family_ttl is None else now + self._family_ttl
        expires_at = now + self._ttl if family_expires_at is None else min(now + self._ttl, family_expires_at)
        record = RefreshTokenRecord(
            token_hash=_hash(token),
            family_id=family_id,
            subject=subject,
            issued_at=now,
            expires_at=expires_at,
            family_expires_at=family_expires_at,
        )
        await self._store.add(record)
        return IssuedRefreshToken(token=token, family_id=family_id, subject=subject, expires_at=expires_at)

    async def rotate(self, token: str) -> IssuedRefreshToken:
        """Retire ``token`` and return its successor; raise :class:`AuthenticationError` saying why not.

        A token that was already rotated revokes its family: the successor issued earlier stops
        working too, and the caller must log in again.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise AuthenticationError("refresh token rejected: malformed")
        now = self._clock()
        new_token = secrets.token_urlsafe(_TOKEN_BYTES)
        successor = RefreshTokenRecord(
            token_hash=_hash(new_token), family_id="", subject="", issued_at=now, expires_at=now + self._ttl
        )
        outcome, record = await self._store.rotate(_hash(token), successor, now)
        if outcome is RotateOutcome.UNKNOWN or record is None:
            raise AuthenticationError("refresh token rejected: unknown token; log in again")
        if outcome is RotateOutcome.REVOKED:
            raise AuthenticationError("refresh token rejected: its session was revoked; log in again")
        if outcome is RotateOutcome.REUSED:
            raise AuthenticationError(
                "refresh token rejected: it was already used, so its session was revoked; log in again",
                details={"family_id": record.family_id},
            )
        if outcome is RotateOutcome.EXPIRED:
            raise AuthenticationError(
                f"refresh token rejected: expired {now - record.expires_at:.0f} s ago; log in again"
            )
        return IssuedRefreshToken(
            token=new_token, family_id=record.family_id, subject=record.subject, expires_at=record.expires_at
        )

    async def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id`` (logout everywhere for that session)."""
        await self._store.revoke_family(family_id)
