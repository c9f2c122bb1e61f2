"""Password hashing: argon2id for new hashes, bcrypt accepted for users migrated from older systems.

New hashes are always argon2id (RFC 9106) with parameters at least as strong as the OWASP minimum
(m=19 MiB, t=2, p=1). bcrypt hashes (``$2a$``, ``$2b$``, ``$2y$``) are verified but never created;
:meth:`PasswordHasher.needs_rehash` reports them so a service replaces them at the next login.

bcrypt only reads the first 72 bytes of a password and stops at a NUL byte. Verifying such a password
against a bcrypt hash would silently check a different password, so :meth:`PasswordHasher.verify`
returns ``False`` for it and logs why (without the password): the user resets the password once.
"""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Final

import argon2
import argon2.low_level
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mainspring.errors import ConfigError, ConfigProblem, ValidationError
from mainspring.logging import get_logger

__all__ = ["BCRYPT_MAX_PASSWORD_BYTES", "MAX_PASSWORD_CHARS", "PasswordHasher"]

log = get_logger("mainspring.security")

#: bcrypt ignores every byte after the 72nd.
BCRYPT_MAX_PASSWORD_BYTES: Final = 72
#: Longer input is refused before hashing: argon2 cost grows with the input, so this bounds a DoS.
MAX_PASSWORD_CHARS: Final = 4096

_BCRYPT_PREFIXES: Final = ("$2a$", "$2b$", "$2y$")
_ARGON2_PREFIX: Final = "$argon2"


def _check_password(password: object) -> str:
    if not isinstance(password, str):
        raise ValidationError(
            f"password must be a str, got {type(password).__name__}",
            errors=[{"loc": ["password"], "msg": "not a string", "type": "type_error"}],
        )
    if not password:
        raise ValidationError(
            "password must not be empty",
            errors=[{"loc": ["password"], "msg": "empty", "type": "empty"}],
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValidationError(
            f"password is longer than {MAX_PASSWORD_CHARS} characters; use a shorter one",
            errors=[{"loc": ["password"], "msg": "too long", "type": "too_long"}],
        )
    return password


def _check_hash(hashed: object) -> str:
    if not isinstance(hashed, str) or not hashed:
        raise ValidationError(
            "stored password hash must be a non-empty str",
            errors=[{"loc": ["hash"], "msg": "not a non-empty string", "type": "type_error"}],
        )
    return hashed


def _invalid_hash() -> ValidationError:
    return ValidationError(
        "stored password hash is neither an argon2 nor a bcrypt hash; check the value read from storage",
        code="invalid_password_hash",
        errors=[{"loc": ["hash"], "msg": "unrecognised hash format", "type": "invalid_hash"}],
    )


class PasswordHasher:
    """Hash passwords with argon2id and verify argon2 or (migrated) bcrypt hashes.

    ``memory_cost`` is in KiB. With ``normalize`` (the default) passwords are NFKC-normalised before
    argon2 hashing and verification, so the same password typed on different keyboards matches.
    bcrypt hashes are verified against the password as given, as the legacy system saw it.
    Hashing costs tens of milliseconds of CPU: in async code use :meth:`hash_async` and
    :meth:`verify_async`, which run in a worker thread.
    """

    def __init__(
        self,
        *,
        time_cost: int = 2,
        memory_cost: int = 19456,
        parallelism: int = 1,
        hash_len: int = 32,
        salt_len: int = 16,
        normalize: bool = True,
    ) -> None:
        problems: list[ConfigProblem] = []
        for name, value, minimum in (
            ("time_cost", time_cost, 1),
            ("parallelism", parallelism, 1),
            ("hash_len", hash_len, 16),
            ("salt_len", salt_len, 16),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(ConfigProblem(name, f"must be an integer >= {minimum}", str(value)))
        if (
            isinstance(memory_cost, bool)
            or not isinstance(memory_cost, int)
            or memory_cost < 8 * max(parallelism if isinstance(parallelism, int) else 1, 1)
        ):
            problems.append(
                ConfigProblem("memory_cost", "must be an integer >= 8 * parallelism (KiB)", str(memory_cost))
            )
        if problems:
            raise ConfigError("invalid password hasher parameters", problems=problems)
        self._normalize = normalize
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=hash_len,
            salt_len=salt_len,
            type=argon2.Type.ID,
        )
        self._params = argon2.Parameters(
            type=argon2.Type.ID,
            version=argon2.low_level.ARGON2_VERSION,
            salt_len=salt_len,
            hash_len=hash_len,
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
        )

    def __repr__(self) -> str:
        p = self._params
        return (
            f"PasswordHasher(time_cost={p.time_cost}, memory_cost={p.memory_cost}, "
            f"parallelism={p.parallelism})"
        )

    def _prepare(self, password: str) -> str:
        return unicodedata.normalize("NFKC", password) if self._normalize else password

    def hash(self, password: str) -> str:
        """Return an argon2id hash (PHC string) of ``password``; blocks for the hashing time.

        Raises :class:`~mainspring.errors.ValidationError` for a non-str, empty or over-long password.
        """
        return self._hasher.hash(self._prepare(_check_password(password)))

    def verify(self, hashed: str, password: str) -> bool:
        """Return whether ``password`` matches ``hashed`` (argon2 or bcrypt); blocks for the hashing time.

        A bcrypt hash never matches a password over 72 UTF-8 bytes or containing a NUL byte, since
        bcrypt would only check part of it (logged as ``password_rejected_bcrypt_limit``).
        Raises :class:`~mainspring.errors.ValidationError` for bad input or an unrecognised hash.
        """
        hashed = _check_hash(hashed)
        password = _check_password(password)
        if hashed.startswith(_BCRYPT_PREFIXES):
            return self._verify_bcrypt(hashed, password)
        if not hashed.startswith(_ARGON2_PREFIX):
            raise _invalid_hash()
        try:
            # Parsed first: the C library reports a garbled hash as a mere mismatch.
            argon2.extract_parameters(hashed)
            return self._hasher.verify(hashed, self._prepare(password))
        except VerifyMismatchError:
            return False
        except InvalidHashError as exc:
            raise _invalid_hash() from exc
        except VerificationError:
            return False

    def _verify_bcrypt(self, hashed: str, password: str) -> bool:
        raw = password.encode("utf-8")
        if len(raw) > BCRYPT_MAX_PASSWORD_BYTES or b"\x00" in raw:
            log.warning(
                "password_rejected_bcrypt_limit",
                reason="password is over 72 bytes or contains NUL; bcrypt would check only part of it",
                password_bytes=len(raw),
            )
            return False
        try:
            return bcrypt.checkpw(raw, hashed.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise _invalid_hash() from exc

    def needs_rehash(self, hashed: str) -> bool:
        """Return whether ``hashed`` should be replaced by a fresh :meth:`hash` after a successful login.

        True for bcrypt hashes, argon2 hashes of another variant than argon2id, and argon2id hashes with
        weaker parameters (memory, time, hash or salt length, older version) than this hasher's. A
        stronger hash is left alone.
        """
        hashed = _check_hash(hashed)
        if hashed.startswith(_BCRYPT_PREFIXES):
            return True
        if not hashed.startswith(_ARGON2_PREFIX):
            raise _invalid_hash()
        try:
            found = argon2.extract_parameters(hashed)
        except InvalidHashError as exc:
            raise _invalid_hash() from exc
        want = self._params
        return (
            found.type is not argon2.Type.ID
            or found.version < want.version
            or found.memory_cost < want.memory_cost
            or found.time_cost < want.time_cost
            or found.hash_len < want.hash_len
            or found.salt_len < want.salt_len
        )

    async def hash_async(self, password: str) -> str:
        """Like :meth:`hash`, run in a worker thread so the event loop keeps serving."""
        password = _check_password(password)
        return await asyncio.to_thread(self.hash, password)

    async def verify_async(self, hashed: str, password: str) -> bool:
        """Like :meth:`verify`, run in a worker thread so the event loop keeps serving."""
        hashed = _check_hash(hashed)
        password = _check_password(password)
        return await asyncio.to_thread(self.verify, hashed, password)
