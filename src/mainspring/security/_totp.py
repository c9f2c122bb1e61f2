"""Time-based one-time passwords (RFC 6238) with replay prevention.

A code is accepted at most once: after a code of time step ``s`` is accepted for a secret, codes of
step ``s`` and earlier are refused for it. The last accepted step lives in a
:class:`TotpReplayStore` shared by every process that verifies codes (memory for one process and tests;
a Redis store belongs with the Redis backend).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from mainspring.errors import ConfigError, ConfigProblem, ValidationError
from mainspring.logging import get_logger

__all__ = ["MemoryTotpReplayStore", "Totp", "TotpAlgorithm", "TotpReplayStore"]

log = get_logger("mainspring.security")

TotpAlgorithm = Literal["sha1", "sha256", "sha512"]
_DIGESTS: Final = frozenset({"sha1", "sha256", "sha512"})
# RFC 4226 section 4: shared secrets of at least 128 bits; 160 recommended (what generate_secret makes).
_MIN_SECRET_BYTES: Final = 16
_SECRET_BYTES: Final = 20


@runtime_checkable
class TotpReplayStore(Protocol):
    """Where the last accepted time step of each secret is kept."""

    async def claim(self, key: str, step: int, *, ttl: float) -> bool:
        """Atomically record ``step`` for ``key`` if it is later than the stored step; return whether it was.

        ``ttl`` (seconds) is how long the record matters; a store may forget it after that.
        """
        ...


class MemoryTotpReplayStore:
    """An in-process :class:`TotpReplayStore` (one process, tests); records are forgotten after ``ttl``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}
        # A thread lock, not an asyncio one: claim never awaits while holding it, and threads may share it.
        self._lock = threading.Lock()

    async def claim(self, key: str, step: int, *, ttl: float) -> bool:
        """Record ``step`` for ``key`` if it is later than the stored one; return whether it was."""
        now = self._clock()
        with self._lock:
            found = self._last.get(key)
            if found is not None and found[1] > now and step <= found[0]:
                return False
            self._last[key] = (step, now + ttl)
            if len(self._last) > 10_000:
                self._last = {k: v for k, v in self._last.items() if v[1] > now}
            return True


def _decode_secret(secret: object) -> bytes:
    if not isinstance(secret, str):
        raise ValidationError(
            f"TOTP secret must be a base32 str, got {type(secret).__name__}",
            errors=[{"loc": ["secret"], "msg": "not a string", "type": "type_error"}],
        )
    cleaned = secret.replace(" ", "").replace("-", "").upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(
            "TOTP secret is not valid base32 (letters A-Z and digits 2-7)",
            errors=[{"loc": ["secret"], "msg": "invalid base32", "type": "invalid_base32"}],
        ) from exc
    if len(key) < _MIN_SECRET_BYTES:
        raise ValidationError(
            f"TOTP secret is {len(key) * 8} bits; use at least {_MIN_SECRET_BYTES * 8} "
            "(Totp.generate_secret() makes 160)",
            errors=[{"loc": ["secret"], "msg": "too short", "type": "too_short"}],
        )
    return key


class Totp:
    """One user's TOTP generator and verifier (RFC 6238).

    ``secret`` is base32 (as shown to the user and stored encrypted by the service). ``window`` is how
    many steps before and after the current one are accepted (clock drift, slow typing).
    ``replay_key`` identifies the secret in ``replay_store``; by default a SHA-256 digest of the
    secret, so the store never holds the secret itself. Pass the user id if you prefer.
    """

    def __init__(
        self,
        secret: str,
        *,
        replay_store: TotpReplayStore,
        replay_key: str | None = None,
        digits: int = 6,
        period: int = 30,
        algorithm: TotpAlgorithm = "sha1",
        window: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems: list[ConfigProblem] = []
        if isinstance(digits, bool) or not isinstance(digits, int) or not 6 <= digits <= 10:
            problems.append(ConfigProblem("digits", "must be an integer from 6 to 10", str(digits)))
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            problems.append(ConfigProblem("period", "must be a positive integer (seconds)", str(period)))
        if algorithm not in _DIGESTS:
            problems.append(ConfigProblem("algorithm", f"must be one of {sorted(_DIGESTS)}", str(algorithm)))
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 10:
            problems.append(ConfigProblem("window", "must be an integer from 0 to 10", str(window)))
        if not isinstance(replay_store, TotpReplayStore):
            problems.append(ConfigProblem("replay_store", "must implement TotpReplayStore.claim"))
        if problems:
            raise ConfigError("invalid TOTP settings", problems=problems)
        self._key = _decode_secret(secret)
        self._secret = base64.b32encode(self._key).decode("ascii").rstrip("=")
        self.digits = digits
        self.period = period
        self.algorithm: TotpAlgorithm = algorithm
        self.window = window
        self._store = replay_store
        self._replay_key = replay_key or "totp:" + hashlib.sha256(self._key).hexdigest()
        self._clock = clock

    def __repr__(self) -> str:
        # Never the secret.
        return f"Totp(algorithm={self.algorithm!r}, digits={self.digits}, period={self.period})"

    @staticmethod
    def generate_secret() -> str:
        """Return a fresh random 160-bit secret in base32 (32 characters, no padding)."""
        return base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii").rstrip("=")

    @property
    def secret(self) -> str:
        """The secret in canonical base32 (uppercase, unpadded); store it encrypted, show it at enrolment."""
        return self._secret

    def _step(self, at: float | None) -> int:
        return int((self._clock() if at is None else at) // self.period)

    def _code_for_step(self, step: int) -> str:
        mac = hmac.new(self._key, struct.pack(">Q", step), self.algorithm).digest()
        offset = mac[-1] & 0x0F
        value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
        return str(value % 10**self.digits).zfill(self.digits)

    def code(self, at: float | None = None) -> str:
        """Return the code for Unix time ``at`` (default: now)."""
        return self._code_for_step(self._step(at))

    def provisioning_uri(self, account: str, issuer: str) -> str:
        """Return the ``otpauth://totp/...`` URI an authenticator app reads (usually from a QR code).

        Neither ``account`` nor ``issuer`` may contain a colon (the label separator) or be empty.
        """
        problems = []
        for name, value in (("account", account), ("issuer", issuer)):
            if not isinstance(value, str) or not value.strip() or ":" in value:
                problems.append(
                    {"loc": [name], "msg": "must be a non-empty str without ':'", "type": "invalid"}
                )
        if problems:
            raise ValidationError("invalid TOTP account or issuer", errors=problems)
        label = quote(f"{issuer}:{account}", safe=":@")
        query = urlencode(
            {
                "secret": self._secret,
                "issuer": issuer,
                "algorithm": self.algorithm.upper(),
                "digits": self.digits,
                "period": self.period,
            },
            quote_via=quote,
        )
        return f"otpauth://totp/{label}?{query}"

    def matching_step(self, code: str, *, at: float | None = None) -> int | None:
        """Return the time step within the window whose code is ``code``, or ``None``; no replay check.

        Spaces in ``code`` are ignored; anything but ``digits`` digits never matches. Every candidate
        is compared in constant time.
        """
        if not isinstance(code, str):
            raise ValidationError(
                f"TOTP code must be a str, got {type(code).__name__}",
                errors=[{"loc": ["code"], "msg": "not a string", "type": "type_error"}],
            )
        cleaned = code.replace(" ", "")
        if len(cleaned) != self.digits or not cleaned.isascii() or not cleaned.isdigit():
            return None
        current = self._step(at)
        found: int | None = None
        for step in range(current - self.window, current + self.window + 1):
            if step >= 0 and hmac.compare_digest(self._code_for_step(step), cleaned) and found is None:
                found = step
        return found

    async def verify(self, code: str, *, at: float | None = None) -> bool:
        """Return whether ``code`` is valid now (or at ``at``) and was not accepted before.

        A code matching a step at or before the last accepted step for this secret is refused, so a
        code observed by an attacker cannot be reused, even concurrently: the store decides atomically.
        """
        step = self.matching_step(code, at=at)
        if step is None:
            return False
        ttl = float(self.period * (2 * self.window + 1))
        if await self._store.claim(self._replay_key, step, ttl=ttl):
            return True
        log.warning("totp_replay_rejected", reason="code for this time step was already used")
        return False
