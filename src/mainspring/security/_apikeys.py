"""API keys of the form ``msk_<prefix>_<secret>``, stored as a prefix and a SHA-256 of the secret.

The prefix is a public lookup id (it may appear in logs and admin screens); the secret is 256 random
bits, so a fast unsalted SHA-256 is enough: nobody can brute-force a 256-bit preimage, and a slow
password hash would only add latency to every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from mainspring.errors import AuthenticationError, NotFoundError, ValidationError

__all__ = ["ApiKeyRecord", "ApiKeyService", "ApiKeyStore", "IssuedApiKey", "MemoryApiKeyStore"]

_PREFIX_CHARS: Final = 10
_PREFIX_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_BYTES: Final = 32
# token_urlsafe(32) yields 43 characters of [A-Za-z0-9_-]; the pattern accepts a little slack either way
# so a key issued with a future, longer secret still parses.
_KEY_RE: Final = re.compile(r"msk_([a-z0-9]{8,12})_([A-Za-z0-9_-]{43,128})")


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What is stored about one API key: never the secret itself, only its SHA-256."""

    prefix: str
    owner: str
    secret_hash: bytes
    scopes: tuple[str, ...] = ()
    name: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked: bool = False

    def __repr__(self) -> str:
        # The hash is not a secret in the strict sense, but it has no business in logs either.
        return (
            f"ApiKeyRecord(prefix={self.prefix!r}, owner={self.owner!r}, scopes={self.scopes!r}, "
            f"expires_at={self.expires_at!r}, revoked={self.revoked!r})"
        )


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A freshly issued key: ``key`` is the full secret, shown to the caller once and never stored."""

    key: str
    record: ApiKeyRecord

    @property
    def prefix(self) -> str:
        """The public id of the key, used to look it up and to revoke it."""
        return self.record.prefix

    def __repr__(self) -> str:
        return f"IssuedApiKey(prefix={self.prefix!r}, key='***')"


@runtime_checkable
class ApiKeyStore(Protocol):
    """Where API key records live; implementations must be safe under concurrent use."""

    async def add(self, record: ApiKeyRecord) -> bool:
        """Store a new record; return False (storing nothing) if its prefix is taken."""
        ...

    async def get(self, prefix: str) -> ApiKeyRecord | None:
        """Return the record for ``prefix``, or None."""
        ...

    async def update(self, record: ApiKeyRecord) -> bool:
        """Replace the record with the same prefix; return False if there is none.

        A revoked record stays revoked whatever ``record`` says, atomically: a ``verify()`` that read
        the key before a concurrent ``revoke()`` must not undo it when it writes ``last_used_at``.
        """
        ...


class MemoryApiKeyStore:
    """An in-process :class:`ApiKeyStore` for tests and single-process tools."""

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}

    async def add(self, record: ApiKeyRecord) -> bool:
        """Store a new record unless its prefix is taken."""
        if record.prefix in self._records:
            return False
        self._records[record.prefix] = record
        return True

    async def get(self, prefix: str) -> ApiKeyRecord | None:
        """Return the record for ``prefix``, or None."""
        return self._records.get(prefix)

    async def update(self, record: ApiKeyRecord) -> bool:
        """Replace the record with the same prefix; a revoked record stays revoked."""
        current = self._records.get(record.prefix)
        if current is None:
            return False
        if current.revoked and not record.revoked:
            record = dataclasses.replace(record, revoked=True)
        self._records[record.prefix] = record
        return True


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


class ApiKeyService:
    """Issues, verifies and revokes API keys kept in an :class:`ApiKeyStore`.

    ``clock`` returns Unix seconds; tests pass a fake one to cross an expiry without sleeping.
    """

    def __init__(self, store: ApiKeyStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def issue(
        self,
        owner: str,
        *,
        scopes: Iterable[str] = (),
        expires_in: float | None = None,
        name: str | None = None,
    ) -> IssuedApiKey:
        """Create a key for ``owner``; the returned ``key`` is the only time the secret is visible."""
        if not owner:
            raise ValidationError("API key owner must not be empty: pass the user or service id")
        if expires_in is not None and expires_in <= 0:
            raise ValidationError(f"API key expires_in must be positive seconds, got {expires_in!r}")
        if isinstance(scopes, str):
            raise ValidationError("API key scopes must be a sequence of strings, not one string")
        scope_tuple = tuple(scopes)
        now = self._clock()
        # A 10-char base36 prefix has ~52 bits; a collision is astronomically rare, but retrying is cheap.
        for _ in range(5):
            prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_CHARS))
            secret = secrets.token_urlsafe(_SECRET_BYTES)
            record = ApiKeyRecord(
                prefix=prefix,
                owner=owner,
                secret_hash=_hash_secret(secret),
                scopes=scope_tuple,
                name=name,
                created_at=now,
                expires_at=None if expires_in is None else now + expires_in,
            )
            if await self._store.add(record):
                return IssuedApiKey(key=f"msk_{prefix}_{secret}", record=record)
        raise RuntimeError("could not allocate a unique API key prefix after 5 attempts")  # pragma: no cover

    async def verify(self, key: str) -> ApiKeyRecord:
        """Check ``key`` and record its use; raise :class:`AuthenticationError` saying why it was refused."""
        match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise AuthenticationError("API key rejected: malformed, expected 'msk_<prefix>_<secret>'")
        prefix, secret = match.groups()
        record = await self._store.get(prefix)
        # Hash even for unknown prefixes so timing does not tell which prefixes exist.
        presented = _hash_secret(secret)
        if record is None:
            hmac.compare_digest(presented, presented)
            raise AuthenticationError(f"API key rejected: no key with prefix {prefix!r}")
        if not hmac.compare_digest(presented, record.secret_hash):
            raise AuthenticationError(f"API key rejected: wrong secret for prefix {prefix!r}")
        if record.revoked:
            raise AuthenticationError(f"API key rejected: key {prefix!r} was revoked; issue a new one")
        now = self._clock()
        if record.expires_at is not None and now >= record.expires_at:
            ago = now - record.expires_at
            raise AuthenticationError(f"API key rejected: key {prefix!r} expired {ago:.0f} s ago")
        used = dataclasses.replace(record, last_used_at=now)
        await self._store.update(used)
        return used

    async def revoke(self, prefix: str) -> None:
        """Revoke the key with ``prefix``; raise :class:`NotFoundError` if there is none."""
        record = await self._store.get(prefix)
        if record is None:
            raise NotFoundError(f"no API key with prefix {prefix!r} to revoke")
        if not record.revoked:
            await self._store.update(dataclasses.replace(record, revoked=True))

    async def get(self, prefix: str) -> ApiKeyRecord | None:
        """Return the stored record for ``prefix`` (without verifying anything), or None."""
        return await self._store.get(prefix)
