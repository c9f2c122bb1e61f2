"""Server-side sessions behind a signed session-id cookie: stores, the manager, cookie attributes.

The cookie carries only ``<id>.<signature>``: a 256-bit random id and an HMAC-SHA256 of it under the
service secret. Everything else (principal, data, CSRF token, timestamps) stays on the server, under
the SHA-256 of the id, so a copy of the store holds no usable cookie. The id changes at login and at
every privilege change (:meth:`SessionManager.rotate`); a session ends after ``idle_timeout`` without
use or ``absolute_timeout`` after it was created, whichever comes first.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

import orjson
from pydantic import SecretStr

from mainspring._compat import require
from mainspring._lifecycle import AsyncLifecycle
from mainspring.context import Principal
from mainspring.errors import AuthenticationError, ServiceUnavailableError, ValidationError
from mainspring.logging import get_logger

__all__ = [
    "MemorySessionStore",
    "RedisSessionStore",
    "Session",
    "SessionCookie",
    "SessionManager",
    "SessionRecord",
    "SessionStore",
]

log = get_logger("mainspring.security.sessions")

_FEATURE: Final = "the Redis session store"
_SIGNING_CONTEXT: Final = b"mainspring.session.v1:"
_ID_BYTES: Final = 32
_MIN_SECRET_BYTES: Final = 32
# Sliding the idle deadline costs a store write; one per this many seconds of activity is plenty.
_DEFAULT_TOUCH_INTERVAL: Final = 60.0
# Touch the record only if it still exists, so a touch racing a logout cannot resurrect the session.
_TOUCH_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Rotation: only a session that still exists moves, so rotating cannot resurrect an ended session.
_REPLACE_SCRIPT: Final = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'p', ARGV[1], 't', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a :class:`SessionStore` keeps per session: an opaque ``payload`` and the last-use time."""

    payload: bytes
    last_seen_at: float


@runtime_checkable
class SessionStore(Protocol):
    """Where session records live, keyed by an opaque string; implementations are concurrency-safe.

    ``ttl`` is in seconds; the store may forget a record after it (the manager checks the timeouts
    itself, so a store that keeps records longer is still correct, only bigger).
    """

    async def get(self, key: str) -> SessionRecord | None:
        """Return the record under ``key``, or None."""
        ...

    async def put(self, key: str, record: SessionRecord, ttl: float) -> None:
        """Store ``record`` under ``key`` (replacing any), forgotten after ``ttl`` seconds."""
        ...

    async def touch(self, key: str, last_seen_at: float, ttl: float) -> bool:
        """Update the last-use time and the expiry of an existing record; False if there is none."""
        ...

    async def replace(self, old_key: str, new_key: str, record: SessionRecord, ttl: float) -> bool:
        """Atomically delete ``old_key`` and store ``record`` under ``new_key``.

        Return False, storing nothing, when there is no record under ``old_key``.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete the record under ``key``; return whether there was one."""
        ...


class MemorySessionStore:
    """An in-process :class:`SessionStore` for tests and single-process services.

    ``clock`` returns seconds (monotonic by default); expired records are purged lazily.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, tuple[SessionRecord, float]] = {}

    def _live(self, key: str) -> SessionRecord | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._records[key]
            return None
        return entry[0]

    def _purge(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._records.items() if expires <= now]:
            del self._records[key]

    async def get(self, key: str) -> SessionRecord | None:
        """Return the live record under ``key``, or None."""
        return self._live(key)

    async def put(self, key: str, record: SessionRecord, ttl: float) -> None:
        """Store ``record`` for ``ttl`` seconds."""
        self._purge()
        self._records[key] = (record, self._clock() + ttl)

    async def touch(self, key: str, last_seen_at: float, ttl: float) -> bool:
        """Move the last-use time and expiry of a live record."""
        record = self._live(key)
        if record is None:
            return False
        self._records[key] = (SessionRecord(record.payload, last_seen_at), self._clock() + ttl)
        return True

    async def replace(self, old_key: str, new_key: str, record: SessionRecord, ttl: float) -> bool:
        """Move to ``new_key`` if ``old_key`` is live (no await in between, so atomic here)."""
        if self._live(old_key) is None:
            return False
        del self._records[old_key]
        self._records[new_key] = (record, self._clock() + ttl)
        return True

    async def delete(self, key: str) -> bool:
        """Delete the record under ``key``."""
        return self._records.pop(key, None) is not None

    def __len__(self) -> int:
        """Return the number of records, expired ones not yet purged included."""
        return len(self._records)


class RedisSessionStore(AsyncLifecycle):
    """A :class:`SessionStore` in Redis: one hash per session (``p`` payload, ``t`` last use) with a TTL.

    Nothing connects until :meth:`start`. Every call is bounded by ``timeout`` seconds; a Redis that is
    down or slow raises :class:`ServiceUnavailableError` (503), so a request never passes as "no
    session" because the store failed.
    """

    def __init__(self, url: str, *, key_prefix: str = "mainspring:session:", timeout: float = 1.0) -> None:
        """Remember where to connect; nothing connects until :meth:`start`."""
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValidationError(f"session store timeout must be positive seconds, got {timeout!r}")
        self._url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._client: Any = None
        self._touch: Any = None
        self._replace: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    async def start(self) -> None:
        """Create the client; the connection opens on first use."""
        if self._client is not None:
            return
        redis = require("redis", extra="redis", feature=_FEATURE)
        asyncio_redis = require("redis.asyncio", extra="redis", feature=_FEATURE)
        self._errors = (redis.exceptions.RedisError, OSError, TimeoutError)
        self._client = asyncio_redis.Redis.from_url(
            self._url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
        )
        self._touch = self._client.register_script(_TOUCH_SCRIPT)
        self._replace = self._client.register_script(_REPLACE_SCRIPT)

    async def stop(self) -> None:
        """Close the client and its connections; safe to call more than once."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise ServiceUnavailableError("the Redis session store is not started: call start()")
        return self._client

    def _unavailable(self, action: str, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Redis session {action} failed ({type(exc).__name__}); check that Redis is reachable",
            details={"error": type(exc).__name__},
        )

    @staticmethod
    def _ms(ttl: float) -> int:
        return max(1, math.ceil(ttl * 1000))

    async def get(self, key: str) -> SessionRecord | None:
        """Return the record under ``key``, or None (also for a half-written hash)."""
        client = self._require_client()
        try:
            async with asyncio.timeout(self._timeout):
                payload, seen = await client.hmget(self._prefix + key, "p", "t")
        except self._errors as exc:
            raise self._unavailable("read", exc) from exc
        if payload is None or seen is None:
            return None
        return SessionRecord(bytes(payload), float(seen))

    async def put(self, key: str, record: SessionRecord, ttl: float) -> None:
        """Write the whole record and its expiry in one transaction."""
        client = self._require_client()
        name = self._prefix + key
        try:
            async with asyncio.timeout(self._timeout), client.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"p": record.payload, "t": repr(record.last_seen_at)})
                pipe.pexpire(name, self._ms(ttl))
                await pipe.execute()
        except self._errors as exc:
            raise self._unavailable("write", exc) from exc

    async def touch(self, key: str, last_seen_at: float, ttl: float) -> bool:
        """Update last use and expiry only if the record exists (one script, so no resurrection)."""
        self._require_client()
        try:
            async with asyncio.timeout(self._timeout):
                done = await self._touch(keys=[self._prefix + key], args=[repr(last_seen_at), self._ms(ttl)])
        except self._errors as exc:
            raise self._unavailable("touch", exc) from exc
        return bool(done)

    async def replace(self, old_key: str, new_key: str, record: SessionRecord, ttl: float) -> bool:
        """Delete ``old_key`` and write ``new_key`` in one script, only if ``old_key`` exists.

        Both keys are in one script call: on Redis Cluster give ``key_prefix`` a hash tag
        (``"{sessions}:"``) so they land in one slot.
        """
        self._require_client()
        keys = [self._prefix + old_key, self._prefix + new_key]
        args = [record.payload, repr(record.last_seen_at), self._ms(ttl)]
        try:
            async with asyncio.timeout(self._timeout):
                moved = await self._replace(keys=keys, args=args)
        except self._errors as exc:
            raise self._unavailable("rotation", exc) from exc
        return bool(moved)

    async def delete(self, key: str) -> bool:
        """Delete the record under ``key``."""
        client = self._require_client()
        try:
            async with asyncio.timeout(self._timeout):
                removed = await client.delete(self._prefix + key)
        except self._errors as exc:
            raise self._unavailable("delete", exc) from exc
        return bool(removed)


@dataclass(frozen=True, slots=True)
class SessionCookie:
    """Attributes of the session cookie; the defaults are ``Secure``, ``HttpOnly``, ``SameSite=Lax``.

    ``max_age`` ``None`` makes a browser-session cookie (dropped when the browser closes). Use the name
    ``__Host-session`` when the service owns its whole host: browsers then refuse the cookie unless it is
    ``Secure``, has ``Path=/`` and no ``Domain``.
    """

    name: str = "session"
    secure: bool = True
    http_only: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    max_age: int | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ' ;,="\t\r\n'):
            raise ValidationError(f"session cookie name {self.name!r} is not a valid cookie name")
        if self.same_site not in ("lax", "strict", "none"):
            raise ValidationError(f"same_site must be 'lax', 'strict' or 'none', got {self.same_site!r}")
        if self.same_site == "none" and not self.secure:
            raise ValidationError("SameSite=None cookies must be Secure (browsers drop them otherwise)")
        if self.name.startswith("__Host-") and (not self.secure or self.path != "/" or self.domain):
            raise ValidationError("a __Host- cookie must be Secure, with path '/' and no domain")

    def _attributes(self) -> list[str]:
        parts = [f"Path={self.path}"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.http_only:
            parts.append("HttpOnly")
        if self.secure:
            parts.append("Secure")
        parts.append(f"SameSite={self.same_site.capitalize()}")
        return parts

    def header(self, value: str) -> str:
        """Return a ``Set-Cookie`` value setting the cookie to ``value``."""
        parts = [f"{self.name}={value}", *self._attributes()]
        if self.max_age is not None:
            parts.insert(1, f"Max-Age={self.max_age}")
        return "; ".join(parts)

    def clear_header(self) -> str:
        """Return a ``Set-Cookie`` value that deletes the cookie."""
        expired = ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
        return "; ".join([f"{self.name}=", *expired, *self._attributes()])


@dataclass(slots=True)
class Session:
    """One server-side session: who is logged in (``principal``), free-form JSON ``data``, timestamps.

    ``id`` is the secret part of the cookie; it is never shown by ``repr``. Change ``data`` and call
    :meth:`SessionManager.save`; change the principal only with :meth:`SessionManager.login` or
    :meth:`SessionManager.rotate`, so the id changes with the privileges.
    """

    id: str = field(repr=False)
    principal: Principal | None
    data: dict[str, Any]
    csrf_secret: str = field(repr=False)
    created_at: float
    last_seen_at: float


def _encode_principal(principal: Principal | None) -> dict[str, Any] | None:
    if principal is None:
        return None
    return {
        "id": principal.id,
        "kind": principal.kind,
        "tenant": principal.tenant,
        "roles": sorted(principal.roles),
        "scopes": sorted(principal.scopes),
        "auth_method": principal.auth_method,
    }


def _decode_principal(raw: Any) -> Principal | None:
    if raw is None:
        return None
    return Principal(
        id=raw["id"],
        kind=raw["kind"],
        tenant=raw["tenant"],
        roles=frozenset(raw["roles"]),
        scopes=frozenset(raw["scopes"]),
        auth_method=raw["auth_method"],
    )


def _secret_bytes(secret: str | bytes | SecretStr) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    raw = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(raw, bytes) or len(raw) < _MIN_SECRET_BYTES:
        raise ValidationError(
            f"the session signing secret must be at least {_MIN_SECRET_BYTES} bytes; "
            "use settings.secret_key or secrets.token_urlsafe(32)"
        )
    return raw


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class SessionManager:
    """Create, load, rotate and destroy sessions in a :class:`SessionStore`; sign and parse the cookie.

    ``secret`` signs the cookie; pass several (newest first) to rotate it: the first signs, all verify.
    ``idle_timeout`` and ``absolute_timeout`` are in seconds; ``touch_interval`` bounds how often use
    of a session is written back (default: a minute, or a quarter of the idle timeout if shorter).
    ``clock`` returns Unix seconds (tests pass a fake one to cross a timeout without sleeping).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        secret: str | bytes | SecretStr | Sequence[str | bytes | SecretStr],
        idle_timeout: float = 1800.0,
        absolute_timeout: float = 12 * 3600.0,
        touch_interval: float | None = None,
        cookie: SessionCookie | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secrets_in = [secret] if isinstance(secret, str | bytes | SecretStr) else list(secret)
        if not secrets_in:
            raise ValidationError("SessionManager needs at least one signing secret")
        self._keys = [_secret_bytes(s) for s in secrets_in]
        for name, value in (("idle_timeout", idle_timeout), ("absolute_timeout", absolute_timeout)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValidationError(f"session {name} must be positive seconds, got {value!r}")
        if idle_timeout > absolute_timeout:
            raise ValidationError(
                f"session idle_timeout ({idle_timeout:g} s) must not exceed absolute_timeout "
                f"({absolute_timeout:g} s)"
            )
        self._store = store
        self.idle_timeout = float(idle_timeout)
        self.absolute_timeout = float(absolute_timeout)
        self.touch_interval = (
            min(_DEFAULT_TOUCH_INTERVAL, self.idle_timeout / 4) if touch_interval is None else touch_interval
        )
        self.cookie = cookie or SessionCookie()
        self._clock = clock

    # -- cookie ---------------------------------------------------------------------------------------

    def _sign(self, session_id: str, key: bytes) -> str:
        return _b64(hmac.new(key, _SIGNING_CONTEXT + session_id.encode("ascii"), hashlib.sha256).digest())

    def cookie_value(self, session: Session) -> str:
        """Return the signed cookie value for ``session``: ``<id>.<signature>``."""
        return f"{session.id}.{self._sign(session.id, self._keys[0])}"

    def set_cookie_header(self, session: Session) -> str:
        """Return the ``Set-Cookie`` header value that hands ``session`` to the browser."""
        return self.cookie.header(self.cookie_value(session))

    def clear_cookie_header(self) -> str:
        """Return the ``Set-Cookie`` header value that deletes the session cookie."""
        return self.cookie.clear_header()

    def _unsign(self, value: str) -> str | None:
        session_id, dot, signature = value.partition(".")
        if not dot or not session_id.isascii() or not signature.isascii() or len(value) > 256:
            return None
        valid = False
        for key in self._keys:
            # Every key is tried, so timing does not tell which one matched.
            valid |= hmac.compare_digest(self._sign(session_id, key), signature)
        return session_id if valid else None

    @staticmethod
    def _store_key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode("ascii")).hexdigest()

    # -- records --------------------------------------------------------------------------------------

    def _ttl(self, session: Session, now: float) -> float:
        return min(self.idle_timeout, session.created_at + self.absolute_timeout - now)

    @staticmethod
    def _record(session: Session) -> SessionRecord:
        body = {
            "v": 1,
            "principal": _encode_principal(session.principal),
            "data": session.data,
            "csrf": session.csrf_secret,
            "created_at": session.created_at,
        }
        try:
            payload = orjson.dumps(body)
        except TypeError as exc:
            raise ValidationError(f"session data must be JSON-serialisable: {exc}") from None
        return SessionRecord(payload, session.last_seen_at)

    async def create(
        self, *, principal: Principal | None = None, data: Mapping[str, Any] | None = None
    ) -> Session:
        """Create and store a new session (anonymous unless ``principal`` is given)."""
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(_ID_BYTES),
            principal=principal,
            data=dict(data or {}),
            csrf_secret=secrets.token_urlsafe(_ID_BYTES),
            created_at=now,
            last_seen_at=now,
        )
        await self._store.put(self._store_key(session.id), self._record(session), self.idle_timeout)
        return session

    async def load(self, cookie_value: str | None) -> Session | None:
        """Return the live session the cookie names; None when absent, forged, unknown or expired."""
        session, _ = await self._resolve(cookie_value)
        return session

    async def require(self, cookie_value: str | None) -> Session:
        """Like :meth:`load`, but raise :class:`AuthenticationError` saying why there is no session."""
        session, reason = await self._resolve(cookie_value)
        if session is None:
            raise AuthenticationError(f"session rejected: {reason}", details={"reason": reason})
        return session

    async def _resolve(self, cookie_value: str | None) -> tuple[Session | None, str]:
        if not cookie_value:
            return None, "no session cookie; log in first"
        session_id = self._unsign(cookie_value)
        if session_id is None:
            log.info("session_rejected", reason="bad_signature")
            return None, "the session cookie is not validly signed; log in again"
        key = self._store_key(session_id)
        record = await self._store.get(key)
        if record is None:
            return None, "the session is unknown or was ended; log in again"
        body = orjson.loads(record.payload)
        session = Session(
            id=session_id,
            principal=_decode_principal(body["principal"]),
            data=body["data"],
            csrf_secret=body["csrf"],
            created_at=float(body["created_at"]),
            last_seen_at=record.last_seen_at,
        )
        now = self._clock()
        reason = None
        if now >= session.created_at + self.absolute_timeout:
            reason = f"the session reached its absolute timeout of {self.absolute_timeout:g} s"
        elif now >= session.last_seen_at + self.idle_timeout:
            reason = f"the session was idle for more than {self.idle_timeout:g} s"
        if reason is not None:
            await self._store.delete(key)
            log.info("session_expired", reason=reason)
            return None, f"{reason}; log in again"
        if now - session.last_seen_at >= self.touch_interval:
            session.last_seen_at = now
            if not await self._store.touch(key, now, self._ttl(session, now)):
                return None, "the session was ended; log in again"
        return session, ""

    async def save(self, session: Session) -> None:
        """Write ``session.data`` back (the id does not change); counts as use of the session."""
        now = self._clock()
        ttl = self._ttl(session, now)
        if ttl <= 0:
            raise AuthenticationError("session rejected: the session reached its absolute timeout")
        session.last_seen_at = now
        await self._store.put(self._store_key(session.id), self._record(session), ttl)

    async def rotate(self, session: Session, *, principal: Principal | None = None) -> Session:
        """Move ``session`` to a fresh id and CSRF secret; the old id stops working at once.

        Call it at every privilege change; ``principal`` replaces the session's principal when given.
        The returned session must be sent to the browser (``set_cookie_header``).
        """
        new = self._successor(session, principal, session.created_at, session.data)
        if not await self._store.replace(
            self._store_key(session.id),
            self._store_key(new.id),
            self._record(new),
            self._ttl(new, new.last_seen_at),
        ):
            raise AuthenticationError("session rejected: the session was ended; log in again")
        return new

    def _successor(
        self, session: Session, principal: Principal | None, created_at: float, data: Mapping[str, Any]
    ) -> Session:
        now = self._clock()
        new = Session(
            id=secrets.token_urlsafe(_ID_BYTES),
            principal=principal if principal is not None else session.principal,
            data=dict(data),
            csrf_secret=secrets.token_urlsafe(_ID_BYTES),
            created_at=created_at,
            last_seen_at=now,
        )
        if self._ttl(new, now) <= 0:
            raise AuthenticationError("session rejected: the session reached its absolute timeout")
        return new

    async def login(self, session: Session | None, principal: Principal) -> Session:
        """Start an authenticated session for ``principal``, replacing ``session`` (if any) with a new id.

        Data of an anonymous session carries over (a basket, say); a session that was already logged in
        is replaced by an empty one, so nothing crosses from one login to the next. The absolute timeout
        restarts, since a login is a new authentication.
        """
        if session is None:
            return await self.create(principal=principal)
        new = self._successor(
            session, principal, self._clock(), session.data if session.principal is None else {}
        )
        key, record, ttl = self._store_key(new.id), self._record(new), self._ttl(new, new.last_seen_at)
        if not await self._store.replace(self._store_key(session.id), key, record, ttl):
            # The old session ended meanwhile (expired, logged out elsewhere): a login starts afresh anyway.
            await self._store.put(key, record, ttl)
        return new

    async def destroy(self, session: Session) -> None:
        """End ``session``: its cookie no longer works."""
        await self._store.delete(self._store_key(session.id))
