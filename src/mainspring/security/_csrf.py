"""CSRF protection for cookie-authenticated requests: a synchronizer token bound to the session.

Each :class:`~mainspring.security.Session` holds a random CSRF secret that changes whenever the session
id does (login, privilege change). Pages and API clients receive a *masked* form of it (a fresh random
mask XOR the secret, so the token differs on every response and cannot be recovered by compression
side channels such as BREACH) and send it back in a header on every unsafe request. The check unmasks
it and compares it with the session's secret in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Iterable
from typing import Final

from mainspring.errors import PermissionDeniedError, ValidationError
from mainspring.logging import get_logger
from mainspring.security._sessions import Session

__all__ = ["CsrfProtect"]

log = get_logger("mainspring.security.csrf")

#: Methods that must not change state (RFC 9110 section 9.2.1); they never need a token.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MAX_TOKEN_CHARS: Final = 512


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class CsrfProtect:
    """Issue and check CSRF tokens bound to a session.

    ``header_name`` is where clients send the token (default ``X-CSRF-Token``); ``safe_methods`` are
    exempt. A failed check raises :class:`~mainspring.errors.PermissionDeniedError` (403) with code
    ``csrf_failed`` and is logged.
    """

    def __init__(
        self, *, header_name: str = "X-CSRF-Token", safe_methods: Iterable[str] = SAFE_METHODS
    ) -> None:
        if not header_name or any(c in header_name for c in " :\r\n"):
            raise ValidationError(f"CSRF header name {header_name!r} is not a valid header name")
        self.header_name = header_name
        self.safe_methods = frozenset(m.upper() for m in safe_methods)

    def token(self, session: Session) -> str:
        """Return a fresh masked token for ``session``; hand it to the client (page, JSON, header)."""
        secret = session.csrf_secret.encode("ascii")
        mask = secrets.token_bytes(len(secret))
        return base64.urlsafe_b64encode(mask + _xor(mask, secret)).rstrip(b"=").decode("ascii")

    def requires_check(self, method: str) -> bool:
        """Say whether a request with ``method`` must carry a token."""
        return method.upper() not in self.safe_methods

    def is_valid(self, session: Session, presented: str | None) -> bool:
        """Return whether ``presented`` is a token issued for ``session`` (constant-time comparison)."""
        if not presented or len(presented) > _MAX_TOKEN_CHARS or not presented.isascii():
            return False
        try:
            raw = base64.urlsafe_b64decode(presented + "=" * (-len(presented) % 4))
        except (binascii.Error, ValueError):
            return False
        secret = session.csrf_secret.encode("ascii")
        if len(raw) != 2 * len(secret):
            return False
        mask, masked = raw[: len(secret)], raw[len(secret) :]
        return hmac.compare_digest(_xor(mask, masked), secret)

    def verify(self, session: Session, method: str, presented: str | None) -> None:
        """Return if ``method`` is safe or ``presented`` is valid for ``session``; raise 403 otherwise."""
        if not self.requires_check(method):
            return
        if self.is_valid(session, presented):
            return
        reason = "missing" if not presented else "invalid"
        principal = session.principal
        log.warning(
            "csrf_rejected",
            reason=reason,
            method=method.upper(),
            principal_id=principal.id if principal is not None else None,
        )
        raise PermissionDeniedError(
            f"CSRF check failed: the {self.header_name} header is {reason}; send the token issued "
            "with this session on every unsafe request",
            code="csrf_failed",
            details={"header": self.header_name, "reason": reason},
        )
