"""The PostgreSQL lock backend (``postgresql://``; extra ``postgres``): session advisory locks over asyncpg.

Each lease holds one pooled connection with ``pg_advisory_lock(key)`` taken on it, ``key`` being a
64-bit number derived from the lock name with BLAKE2b (stable across processes and versions, unlike
``hash()``). Two names whose keys collide only exclude each other; fencing tokens stay per name.

PostgreSQL has no ttl on advisory locks; the lock ends when its session does. So that the ttl still
means something, the lease releases the lock itself when its ttl runs out, and the session of a held
lock gets ``idle_session_timeout`` = ttl plus a small margin (PostgreSQL 14+): a holder that hangs or is
cut off loses the lock on the server shortly after its ttl, while extends (and the auto-extend task)
keep the session busy.

Fencing tokens come from a small table, upserted ``RETURNING`` while the lock is held
(``mainspring_lock_tokens`` by default, created at start if missing).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

from mainspring._compat import require
from mainspring.config._safety import mask_url_password
from mainspring.errors import ConfigError, ConfigProblem, ServiceUnavailableError
from mainspring.locks.base import Grant, LockBackend
from mainspring.logging import get_logger

__all__ = ["PostgresLockBackend", "advisory_lock_key"]

log = get_logger("mainspring.locks")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# PostgreSQL's integer GUCs (milliseconds here) top out at 2^31 - 1, about 24.8 days.
_MAX_MS = 2**31 - 1
_IDLE_SESSION_TIMEOUT_SINCE = 14


def advisory_lock_key(name: str) -> int:
    """Return the signed 64-bit advisory-lock key of lock ``name``, the same in every process.

    In ``pg_locks`` it shows as ``classid`` (high 32 bits), ``objid`` (low 32 bits), ``objsubid = 1``.
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"mainspring.lock").digest()
    return int.from_bytes(digest, "big", signed=True)


def _ms(seconds: float) -> str:
    return str(min(_MAX_MS, max(1, round(seconds * 1000))))


def _idle_ms(ttl: float) -> str:
    # The server-side backstop fires a little after the ttl, so that a live holder's own release at
    # the ttl (the normal case) never races the server ending the session.
    return _ms(ttl + max(0.5, ttl / 10))


@dataclass(eq=False, slots=True)
class _Hold:
    """A connection holding one advisory lock, and the listener that reports its death."""

    pool: Any
    connection: Any
    key: int
    listener: Any = None
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PostgresLockBackend(LockBackend[_Hold]):
    """Advisory locks on PostgreSQL through an asyncpg pool; each held lock holds one connection."""

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres", "postgresql+asyncpg")
    options: ClassVar[frozenset[str]] = frozenset({"timeout", "connect_timeout", "max_connections", "table"})
    expires_on_server: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_connections: int = 10,
        table: str = "mainspring_lock_tokens",
    ) -> None:
        """Remember where and how to connect; the pool is made in :meth:`start`.

        ``max_connections`` caps the pool, and so the number of locks held at once by this manager.
        ``timeout`` bounds each statement (a wait for a lock gets ``wait`` on top).
        """
        problems = [
            ConfigProblem(name, "must be a number of seconds > 0", repr(value))
            for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout))
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ]
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            problems.append(
                ConfigProblem("max_connections", "must be an integer >= 1", repr(max_connections))
            )
        if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
            problems.append(
                ConfigProblem("table", "must be a table name, optionally schema-qualified", repr(table))
            )
        if urlsplit(url).hostname is None and "host=" not in url:
            problems.append(ConfigProblem("url", "names no host", mask_url_password(url)))
        if problems:
            raise ConfigError("invalid options for the postgresql lock backend", problems=problems)
        self._asyncpg = require("asyncpg", extra="postgres", feature="the PostgreSQL lock backend")
        scheme, sep, rest = url.partition("://")
        self._dsn = f"{scheme.partition('+')[0]}{sep}{rest}"
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._max_connections = max_connections
        self._table = ".".join(f'"{part}"' for part in table.split("."))
        self._table_name = table
        self._pool: Any = None
        self._idle_timeout = False
        self._next_token = (
            f"WITH t AS (INSERT INTO {self._table} AS t (name, token) VALUES ($1, 1) "
            "ON CONFLICT (name) DO UPDATE SET token = t.token + 1, updated_at = now() RETURNING t.token) "
            "SELECT token FROM t"
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresLockBackend:
        """Build the backend for a ``postgresql://`` URL (``+asyncpg`` in the scheme is accepted)."""
        return cls(url, **options)

    @property
    def url(self) -> str:
        """The PostgreSQL URL with its password masked."""
        return mask_url_password(self._dsn)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool (one connection up front) and create the token table if it is missing."""
        if self._pool is not None:
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                pool = await self._asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max_connections,
                    timeout=self._connect_timeout,
                    command_timeout=self._timeout,
                    server_settings={"application_name": "mainspring-locks"},
                )
        except self._driver_errors() as exc:
            self._unavailable("connect", exc)
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                self._idle_timeout = conn.get_server_version().major >= _IDLE_SESSION_TIMEOUT_SINCE
                await self._create_table(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, self._driver_errors()):
                self._unavailable(f"create table {self._table_name}", exc)
            raise
        self._pool = pool

    async def _create_table(self, conn: Any) -> None:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self._table, timeout=self._timeout):
            return
        # Several processes may start at once; CREATE TABLE IF NOT EXISTS alone can still collide.
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)",
                advisory_lock_key(f"mainspring.locks:create-table:{self._table_name}"),
                timeout=self._timeout,
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (name text PRIMARY KEY, token bigint NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())",
                timeout=self._timeout,
            )

    async def stop(self) -> None:
        """Close the pool; connections still out (held locks) are closed, which frees their locks."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except TimeoutError:
            pool.terminate()

    # --- errors -----------------------------------------------------------------------------------

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (
            self._asyncpg.PostgresError,
            self._asyncpg.InterfaceError,
            # Raised when the server ends the session while a statement is being sent.
            self._asyncpg.InternalClientError,
            OSError,
            TimeoutError,
        )

    def _unavailable(self, operation: str, exc: BaseException) -> NoReturn:
        detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise ServiceUnavailableError(
            f"postgresql lock backend at {self.url}: {operation} failed ({detail}); check that the "
            f"database is reachable (timeout {self._timeout:g} s)",
            details={"backend": "postgresql", "operation": operation},
        ) from exc

    def _started_pool(self) -> Any:
        if self._pool is None:
            raise ServiceUnavailableError(
                "the postgresql lock backend is not started: call 'await manager.start()' or use 'async with'"
            )
        return self._pool

    def _closed(self, conn: Any) -> bool:
        try:
            return bool(conn.is_closed())
        except self._asyncpg.InterfaceError:
            # The pool takes back a connection the moment it closes, and detaches our proxy of it.
            return True

    async def _give_back(self, pool: Any, conn: Any, *, discard: bool = False) -> None:
        if discard and not self._closed(conn):
            # Closing the session is what frees its locks when a statement on it failed half-way.
            conn.terminate()
        try:
            # The pool's reset also runs pg_advisory_unlock_all() and RESET ALL.
            await pool.release(conn, timeout=self._timeout)
        except self._driver_errors() as exc:
            # The pool has terminated the connection, which frees whatever it held.
            log.warning("lock connection could not be reset; closed it", error=f"{type(exc).__name__}: {exc}")

    # --- locking ----------------------------------------------------------------------------------

    async def try_acquire(self, name: str, ttl: float) -> Grant[_Hold] | None:
        """Take ``name`` if nobody holds it (``pg_try_advisory_lock``)."""
        return await self.acquire(name, ttl, 0.0)

    async def acquire(self, name: str, ttl: float, wait: float) -> Grant[_Hold] | None:
        """Take ``name``, queueing on the server for up to ``wait`` seconds (``lock_timeout``)."""
        pool = self._started_pool()
        deadline = time.monotonic() + wait
        try:
            conn = await pool.acquire(timeout=self._timeout)
        except TimeoutError:
            raise ServiceUnavailableError(
                f"postgresql lock backend at {self.url}: no free connection within {self._timeout:g} s; "
                f"each held lock holds one of max_connections={self._max_connections}, raise it",
                details={"backend": "postgresql", "operation": "acquire"},
            ) from None
        except self._driver_errors() as exc:
            self._unavailable(f"acquire lock {name!r}", exc)
        key = advisory_lock_key(name)
        try:
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=self._timeout)
            else:
                got = await self._wait_for_lock(conn, key, remaining)
            if not got:
                await self._give_back(pool, conn)
                return None
            # The server-side idle timeout starts after the last statement below, so later than this.
            since = time.monotonic()
            token = await conn.fetchval(self._next_token, name, timeout=self._timeout)
            if self._idle_timeout:
                await conn.execute(f"SET idle_session_timeout = {_idle_ms(ttl)}", timeout=self._timeout)
        except self._driver_errors() as exc:
            await self._give_back(pool, conn, discard=True)
            self._unavailable(f"acquire lock {name!r}", exc)
        except BaseException:
            await self._give_back(pool, conn, discard=True)
            raise
        hold = _Hold(pool, conn, key)
        grant = Grant(name, int(token), hold, since)

        def connection_closed(_conn: Any) -> None:
            grant.lost_reason = "its database connection was closed (terminated, timed out or lost)"

        hold.listener = connection_closed
        conn.add_termination_listener(connection_closed)
        return grant

    async def _wait_for_lock(self, conn: Any, key: int, remaining: float) -> bool:
        await conn.execute(f"SET lock_timeout = {_ms(remaining)}", timeout=self._timeout)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", key, timeout=remaining + self._timeout)
        except self._asyncpg.LockNotAvailableError:
            got = False
        else:
            got = True
        await conn.execute("RESET lock_timeout", timeout=self._timeout)
        return got

    async def extend(self, grant: Grant[_Hold], ttl: float) -> bool:
        """Check that the session (and so the lock) is alive and give it the new idle timeout."""
        hold = grant.handle
        async with hold.lock:
            if hold.done or grant.lost_reason is not None or self._closed(hold.connection):
                return False
            try:
                await hold.connection.execute(
                    f"SET idle_session_timeout = {_idle_ms(ttl)}" if self._idle_timeout else "SELECT 1",
                    timeout=self._timeout,
                )
            except self._driver_errors() as exc:
                if self._closed(hold.connection):
                    return False
                self._unavailable(f"extend lock {grant.name!r}", exc)
            return True

    async def release(self, grant: Grant[_Hold]) -> bool:
        """Unlock and return the connection to the pool; ``False`` if the session had died meanwhile.

        When the unlock itself fails, the connection is closed (which frees the lock) and the result
        is ``False``: the lock may have been lost before, and claiming otherwise would hide it.
        """
        hold = grant.handle
        async with hold.lock:
            if hold.done:
                return False
            hold.done = True
            conn = hold.connection
            if grant.lost_reason is not None or self._closed(conn):
                await self._give_back(hold.pool, conn, discard=True)
                return False
            conn.remove_termination_listener(hold.listener)
            try:
                unlocked = bool(
                    await conn.fetchval("SELECT pg_advisory_unlock($1)", hold.key, timeout=self._timeout)
                )
            except self._driver_errors() as exc:
                await self._give_back(hold.pool, conn, discard=True)
                # Ending the session frees the lock all the same, but whether it was still ours up to
                # here is unknown (the server may have ended the session first): report the doubt.
                grant.lost_reason = (
                    f"unlocking failed ({type(exc).__name__}: {exc}); its connection is closed, which frees "
                    "the lock, but it may have been lost before"
                )
                return False
            except BaseException:
                await self._give_back(hold.pool, conn, discard=True)
                raise
            await self._give_back(hold.pool, conn)
            return unlocked
