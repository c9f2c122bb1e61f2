"""What the Redis and SQL security stores share: input checks and the limits they enforce.

A shared store (Redis, SQL) checks what it is given before writing it, so a bad call fails with a
:class:`~mainspring.errors.ValidationError` naming the field instead of a driver error or a silently
truncated column. The limits are the SQL column sizes; the Redis stores apply the same ones, so a record
that fits one backend fits the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from mainspring.errors import ValidationError
from mainspring.security._apikeys import ApiKeyRecord
from mainspring.security._refresh import RefreshTokenRecord

__all__ = [
    "MAX_HASH_CHARS",
    "MAX_ID_CHARS",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PREFIX_CHARS",
    "MAX_SCOPES",
    "check_api_key_record",
    "check_code_hashes",
    "check_number",
    "check_refresh_record",
    "check_sha256",
    "check_text",
]

#: Owners, subjects, user ids, family ids: the column width of every id.
MAX_ID_CHARS: Final = 255
#: API key prefixes (the service makes 10 characters).
MAX_PREFIX_CHARS: Final = 32
#: API key names and scopes.
MAX_NAME_CHARS: Final = 255
#: Scopes per API key.
MAX_SCOPES: Final = 256
#: Stored recovery code hashes (``sha256$<32 hex>$<64 hex>`` is 104 characters).
MAX_HASH_CHARS: Final = 255
#: TOTP replay keys (the default ``totp:<64 hex>`` is 69 characters).
MAX_KEY_CHARS: Final = 255


def _bad(field: str, message: str) -> ValidationError:
    return ValidationError(
        f"{field} {message}", errors=[{"loc": [field], "msg": message, "type": "value_error"}]
    )


def check_text(field: str, value: object, max_chars: int) -> str:
    """Return ``value`` if it is a non-empty str of at most ``max_chars`` characters, else raise."""
    if not isinstance(value, str):
        raise _bad(field, f"must be a str, got {type(value).__name__}")
    if not value:
        raise _bad(field, "must not be empty")
    if len(value) > max_chars:
        raise _bad(field, f"is {len(value)} characters, over the limit of {max_chars}")
    return value


def check_sha256(field: str, value: object) -> bytes:
    """Return ``value`` if it is a 32-byte SHA-256 digest, else raise."""
    if not isinstance(value, bytes) or len(value) != 32:
        raise _bad(field, "must be the 32-byte SHA-256 digest (bytes)")
    return value


def check_number(field: str, value: object, *, optional: bool = False) -> float | None:
    """Return ``value`` as a float if it is a finite number (or None when ``optional``), else raise."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(field, f"must be a finite number of Unix seconds, got {value!r}")
    return float(value)


def check_api_key_record(record: object) -> ApiKeyRecord:
    """Check an :class:`ApiKeyRecord` against the store limits; return it."""
    if not isinstance(record, ApiKeyRecord):
        raise _bad("record", f"must be an ApiKeyRecord, got {type(record).__name__}")
    check_text("prefix", record.prefix, MAX_PREFIX_CHARS)
    check_text("owner", record.owner, MAX_ID_CHARS)
    check_sha256("secret_hash", record.secret_hash)
    if isinstance(record.scopes, str) or not isinstance(record.scopes, tuple):
        raise _bad("scopes", "must be a tuple of strings")
    if len(record.scopes) > MAX_SCOPES:
        raise _bad("scopes", f"holds {len(record.scopes)} scopes, over the limit of {MAX_SCOPES}")
    for scope in record.scopes:
        check_text("scopes", scope, MAX_NAME_CHARS)
    if record.name is not None:
        check_text("name", record.name, MAX_NAME_CHARS)
    check_number("created_at", record.created_at)
    check_number("expires_at", record.expires_at, optional=True)
    check_number("last_used_at", record.last_used_at, optional=True)
    return record


def check_refresh_record(record: object) -> RefreshTokenRecord:
    """Check a :class:`RefreshTokenRecord` against the store limits; return it."""
    if not isinstance(record, RefreshTokenRecord):
        raise _bad("record", f"must be a RefreshTokenRecord, got {type(record).__name__}")
    check_sha256("token_hash", record.token_hash)
    check_text("family_id", record.family_id, MAX_ID_CHARS)
    check_text("subject", record.subject, MAX_ID_CHARS)
    check_number("issued_at", record.issued_at)
    check_number("expires_at", record.expires_at)
    check_number("family_expires_at", record.family_expires_at, optional=True)
    return record


def check_code_hashes(hashes: object) -> list[str]:
    """Return ``hashes`` (a sequence of stored recovery code hashes) without duplicates, order kept."""
    if isinstance(hashes, str | bytes) or not isinstance(hashes, Sequence):
        raise _bad("hashes", "must be a sequence of hash strings (RecoveryCodes.generate() makes them)")
    for hashed in hashes:
        check_text("hashes", hashed, MAX_HASH_CHARS)
    return list(dict.fromkeys(hashes))
