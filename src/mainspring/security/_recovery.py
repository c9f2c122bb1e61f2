"""One-time MFA recovery codes, stored only as salted SHA-256 hashes.

Codes are 80 random bits (16 Crockford base32 characters, shown as ``XXXX-XXXX-XXXX-XXXX``), far beyond
guessing, so a fast salted hash is enough: a slow password hash would add nothing but latency.
Each code works once: :meth:`RecoveryCodes.verify_and_consume` removes its hash atomically through
the :class:`RecoveryCodeStore`, so two concurrent uses of one code cannot both succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

from mainspring.errors import ConfigError, ConfigProblem, ValidationError
from mainspring.logging import get_logger

__all__ = ["MemoryRecoveryCodeStore", "RecoveryCodeStore", "RecoveryCodes"]

log = get_logger("mainspring.security")

# Crockford's base32: no I, L, O, U, so a code read aloud or copied by hand is unambiguous.
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSABLES: Final = str.maketrans({"O": "0", "I": "1", "L": "1", "-": None, " ": None})
_CODE_CHARS: Final = 16
_GROUP: Final = 4
_SALT_BYTES: Final = 16
_SCHEME: Final = "sha256"


@runtime_checkable
class RecoveryCodeStore(Protocol):
    """Where each user's recovery code hashes are kept."""

    async def replace(self, user_id: str, hashes: Sequence[str]) -> None:
        """Replace every stored hash of ``user_id`` with ``hashes``."""
        ...

    async def hashes(self, user_id: str) -> list[str]:
        """Return the stored hashes of ``user_id`` (empty when none)."""
        ...

    async def consume(self, user_id: str, hashed: str) -> bool:
        """Atomically remove ``hashed`` from ``user_id``'s hashes; return whether it was there."""
        ...


class MemoryRecoveryCodeStore:
    """An in-process :class:`RecoveryCodeStore` (one process, tests)."""

    def __init__(self) -> None:
        self._data: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    async def replace(self, user_id: str, hashes: Sequence[str]) -> None:
        """Replace every stored hash of ``user_id`` with ``hashes``."""
        with self._lock:
            self._data[user_id] = list(hashes)

    async def hashes(self, user_id: str) -> list[str]:
        """Return the stored hashes of ``user_id`` (empty when none)."""
        with self._lock:
            return list(self._data.get(user_id, ()))

    async def consume(self, user_id: str, hashed: str) -> bool:
        """Remove ``hashed`` from ``user_id``'s hashes; return whether it was there."""
        with self._lock:
            stored = self._data.get(user_id)
            if stored is None or hashed not in stored:
                return False
            stored.remove(hashed)
            return True


def _normalize(code: object) -> str | None:
    if not isinstance(code, str):
        raise ValidationError(
            f"recovery code must be a str, got {type(code).__name__}",
            errors=[{"loc": ["code"], "msg": "not a string", "type": "type_error"}],
        )
    cleaned = code.upper().translate(_CONFUSABLES)
    if len(cleaned) != _CODE_CHARS or any(ch not in _ALPHABET for ch in cleaned):
        return None
    return cleaned


def _digest(salt: bytes, normalized: str) -> str:
    return hashlib.sha256(salt + normalized.encode("ascii")).hexdigest()


class RecoveryCodes:
    """Issue and redeem one-time recovery codes for users of a :class:`RecoveryCodeStore`."""

    def __init__(self, store: RecoveryCodeStore, *, count: int = 10) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            raise ConfigError(
                "invalid recovery code settings",
                problems=[ConfigProblem("count", "must be an integer from 1 to 100", str(count))],
            )
        if not isinstance(store, RecoveryCodeStore):
            raise ConfigError(
                "invalid recovery code settings",
                problems=[ConfigProblem("store", "must implement RecoveryCodeStore")],
            )
        self._store = store
        self.count = count

    def __repr__(self) -> str:
        return f"RecoveryCodes(count={self.count})"

    @staticmethod
    def hash_code(code: str) -> str:
        """Return the stored form of ``code``: ``sha256$<salt hex>$<digest hex>`` with a fresh salt.

        Raises :class:`ValidationError` when ``code`` is not a well-formed recovery code.
        """
        normalized = _normalize(code)
        if normalized is None:
            raise ValidationError(
                "not a recovery code: expected 16 characters like XXXX-XXXX-XXXX-XXXX",
                errors=[{"loc": ["code"], "msg": "malformed", "type": "malformed"}],
            )
        salt = secrets.token_bytes(_SALT_BYTES)
        return f"{_SCHEME}${salt.hex()}${_digest(salt, normalized)}"

    @staticmethod
    def matches(code: str, hashed: str) -> bool:
        """Return whether ``code`` is the code behind ``hashed`` (constant-time comparison)."""
        normalized = _normalize(code)
        scheme, _, rest = hashed.partition("$")
        salt_hex, _, digest = rest.partition("$")
        if normalized is None or scheme != _SCHEME:
            return False
        try:
            salt = bytes.fromhex(salt_hex)
        except ValueError:
            return False
        return hmac.compare_digest(_digest(salt, normalized), digest)

    def generate(self) -> tuple[list[str], list[str]]:
        """Return ``count`` fresh codes (to show the user once) and their hashes (to store)."""
        codes = []
        for _ in range(self.count):
            raw = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_CHARS))
            codes.append("-".join(raw[i : i + _GROUP] for i in range(0, _CODE_CHARS, _GROUP)))
        return codes, [self.hash_code(c) for c in codes]

    async def issue(self, user_id: str) -> list[str]:
        """Replace ``user_id``'s codes with fresh ones and return them; only their hashes are stored."""
        codes, hashes = self.generate()
        await self._store.replace(user_id, hashes)
        return codes

    async def remaining(self, user_id: str) -> int:
        """Return how many unused codes ``user_id`` has left."""
        return len(await self._store.hashes(user_id))

    async def verify_and_consume(self, user_id: str, code: str) -> bool:
        """Return whether ``code`` is one of ``user_id``'s unused codes, using it up if so.

        Case, dashes and spaces do not matter, and ``O``/``I``/``L`` read as ``0``/``1``. A used,
        unknown or malformed code returns ``False``.
        """
        if _normalize(code) is None:
            return False
        found: str | None = None
        # Every stored hash is checked, so timing does not tell which position matched.
        for hashed in await self._store.hashes(user_id):
            if self.matches(code, hashed) and found is None:
                found = hashed
        if found is None:
            return False
        if await self._store.consume(user_id, found):
            log.info("recovery_code_used", user_id=user_id)
            return True
        return False
