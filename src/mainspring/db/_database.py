"""``Database``: one SQL database, its async engine, session factory, lifecycle, health and transactions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from mainspring._compat import require
from mainspring._lifecycle import AsyncLifecycle
from mainspring.config._sections import DatabaseTLS
from mainspring.db._backends import ConnectOptions, connect_args, install_connection_setup
from mainspring.db._errors import driver_message, is_db_error, translate_db_error
from mainspring.db._pool import PoolCounters, PoolStats, measured_pool_class, pool_stats
from mainspring.db._transaction import (
    IsolationLevel,
    SessionScope,
    Transaction,
    UnitOfWork,
    current_unit,
    retry_on_conflict,
)
from mainspring.db._url import Dialect, parse_url
from mainspring.errors import ConfigError, ConfigProblem, MainspringError, ServiceUnavailableError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from mainspring.config._sections import DatabaseSettings

__all__ = ["Database"]

T = TypeVar("T")

_log = get_logger("mainspring.db")

# Driver codes that no amount of waiting fixes (bad credentials, missing database): start() fails at once.
_PERMANENT_START_CODES = frozenset({"28000", "28P01", "3D000", "1044", "1045", "1049"})


class Database(AsyncLifecycle):
    """One SQL database: a SQLAlchemy async engine and session factory with a lifecycle.

    The constructor only checks and stores the configuration; :meth:`start` builds the engine and waits
    (up to ``start_timeout``) for the database to answer, :meth:`stop` closes every connection. Use it
    as ``async with Database(url) as db:``. Work runs in units of work: :meth:`transaction` and
    :meth:`session`. Driver errors leave as :mod:`mainspring.errors` (see ``docs/db.md``).

    ``busy_timeout`` applies to SQLite only; ``tls`` to PostgreSQL and MySQL only. ``engine_options`` are
    passed to :func:`~sqlalchemy.ext.asyncio.create_async_engine` last, overriding the rest.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "default",
        echo: bool = False,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 10.0,
        pool_recycle: float = 1800.0,
        pool_pre_ping: bool = True,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = None,
        start_timeout: float = 10.0,
        busy_timeout: float = 5.0,
        tls: DatabaseTLS | None = None,
        engine_options: Mapping[str, Any] | None = None,
        password: str | None = None,
    ) -> None:
        self._parsed = parse_url(url, password=password)
        _check_positive(
            pool_size=pool_size,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            connect_timeout=connect_timeout,
            start_timeout=start_timeout,
            statement_timeout=statement_timeout,
        )
        if max_overflow < 0 or busy_timeout < 0:
            raise ConfigError("max_overflow and busy_timeout must be >= 0")
        self.name = name
        self.echo = echo
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = pool_timeout
        self.pool_recycle = pool_recycle
        self.pool_pre_ping = pool_pre_ping
        self.start_timeout = start_timeout
        self._options = ConnectOptions(
            self._parsed.dialect, connect_timeout, statement_timeout, busy_timeout, tls
        )
        if tls is not None:
            connect_args(self._options)  # a SQLite URL with TLS settings is a configuration error: say so now
        self._engine_options = dict(engine_options or {})
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._counters = PoolCounters()

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, name: str = "default") -> Database:
        """Build a database from a :class:`~mainspring.config.DatabaseSettings` section."""
        return cls(
            settings.url,
            name=name,
            echo=settings.echo,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=settings.pool_recycle,
            pool_pre_ping=settings.pool_pre_ping,
            connect_timeout=settings.connect_timeout,
            statement_timeout=settings.statement_timeout,
            start_timeout=settings.start_timeout,
            busy_timeout=settings.busy_timeout,
            tls=settings.tls,
            password=settings.password.get_secret_value() if settings.password else None,
        )

    # --- identity --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL with its password masked (the real one never leaves this object)."""
        return self._parsed.masked

    @property
    def dialect(self) -> Dialect:
        """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
        return self._parsed.dialect

    @property
    def connect_timeout(self) -> float:
        """Seconds allowed to open one connection."""
        return self._options.connect_timeout

    @property
    def statement_timeout(self) -> float | None:
        """Seconds a statement may run before the server cancels it, or ``None`` for no limit."""
        return self._options.statement_timeout

    def __repr__(self) -> str:
        state = "started" if self._engine is not None else "stopped"
        return f"<Database {self.name!r} {self.url} {state}>"

    __str__ = __repr__

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Say whether :meth:`start` has run (and :meth:`stop` has not)."""
        return self._engine is not None

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine`; only after :meth:`start`."""
        if self._engine is None:
            raise self._not_started()
        return self._engine

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The session factory (``expire_on_commit=False``); prefer :meth:`transaction`/:meth:`session`."""
        if self._sessions is None:
            raise self._not_started()
        return self._sessions

    def _not_started(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"database {self.name!r} is not started; call `await database.start()` "
            "(or use `async with database:`) first",
            code="db_not_started",
        )

    async def start(self) -> None:
        """Build the engine and wait until the database answers, for at most ``start_timeout`` seconds.

        Raises :class:`ServiceUnavailableError` if it does not answer in time (or refuses the credentials
        or database name), :class:`~mainspring.errors.MissingDependencyError` if the driver is missing.
        Calling it again on a started database does nothing.
        """
        if self._engine is not None:
            return
        backend = self._parsed.backend
        if backend.extra is not None:
            require(backend.module, extra=backend.extra, feature=backend.feature)
        self._check_sqlite_directory()
        engine = self._build_engine()
        try:
            await self._wait_until_up(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        _log.info("database started", database=self.name, url=self.url)

    def _check_sqlite_directory(self) -> None:
        # SQLite creates the file but not its directory; say so plainly instead of "unable to open".
        path = self._parsed.url.database
        if self.dialect != "sqlite" or self._parsed.is_memory or not path or path.startswith("file:"):
            return
        directory = Path(path).expanduser().absolute().parent
        if not directory.is_dir():
            raise ConfigError(
                f"the directory of SQLite database {self.name!r} does not exist",
                problems=[ConfigProblem("url", f"create {directory} or point the URL elsewhere", self.url)],
            )

    def _build_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {
            "echo": self.echo,
            "pool_pre_ping": self.pool_pre_ping,
            "connect_args": connect_args(self._options),
        }
        if not self._parsed.is_memory:
            # An in-memory SQLite database lives in one connection: keep SQLAlchemy's static pool for it.
            options.update(
                poolclass=measured_pool_class(self._counters),
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
                pool_recycle=self.pool_recycle,
            )
        options.update(self._engine_options)
        engine = create_async_engine(self._parsed.url, **options)
        install_connection_setup(engine, self._options)
        return engine

    async def _wait_until_up(self, engine: AsyncEngine) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        delay = 0.05
        attempts = 0
        last: Exception | None = None
        last_message = ""
        while True:
            attempts += 1
            remaining = deadline - loop.time()
            # SQLite opens a local file in a worker thread that cannot be cancelled (it would report
            # to a loop that may be gone); servers get the connect timeout, cut to the time left.
            limit = (
                None if self.dialect == "sqlite" else max(0.01, min(self._options.connect_timeout, remaining))
            )
            try:
                async with asyncio.timeout(limit):
                    async with engine.connect() as connection:
                        await connection.exec_driver_sql("SELECT 1")
                return
            except (MainspringError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried or reported, translated
                error = _as_unavailable(exc, self)
                permanent = error.details.get("driver_code") in _PERMANENT_START_CODES
                if last is None or not isinstance(exc, TimeoutError):
                    # A refusal says more than the timeout that cut the last attempt short.
                    last, last_message = exc, driver_message(exc, self.dialect)
                remaining = deadline - loop.time()
                if permanent or remaining <= 0:
                    if self.dialect == "sqlite":
                        # aiosqlite stops the worker thread of a failed connection through a future it
                        # does not await; let that thread report before the caller may close the loop.
                        await asyncio.sleep(0.05)
                    waited = (
                        "" if permanent else f" (gave up after {self.start_timeout:g} s, {attempts} attempts)"
                    )
                    raise ServiceUnavailableError(
                        f"database {self.name!r} at {self.url} is not available{waited}: {last_message}. "
                        "Check that the server runs and that the URL, user and password are right",
                        code="db_unavailable",
                        details={**error.details, "attempts": attempts},
                    ) from last
                _log.debug("database not up yet; retrying", database=self.name, error=type(exc).__name__)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)

    async def stop(self) -> None:
        """Close every pooled connection; the database can be started again. Idempotent."""
        engine, self._engine, self._sessions = self._engine, None, None
        if engine is not None:
            await engine.dispose()
            _log.info("database stopped", database=self.name)

    # --- health and metrics ----------------------------------------------------------------------------

    async def ping(self, timeout: float = 2.0) -> float:  # noqa: ASYNC109 - a health check owns its deadline
        """Run ``SELECT 1`` and return the round trip in seconds; ``ServiceUnavailableError`` if it fails.

        ``timeout`` bounds the whole check, waiting for a pooled connection included.
        """
        engine = self.engine
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT 1")
        except TimeoutError as exc:
            raise ServiceUnavailableError(
                f"database {self.name!r} did not answer a ping within {timeout:g} s",
                code="db_unavailable",
                details={"database": self.name, "timeout": timeout},
            ) from exc
        except Exception as exc:
            raise _as_unavailable(exc, self) from exc
        return time.perf_counter() - started

    def pool_stats(self) -> PoolStats:
        """Return a snapshot of the connection pool (all zero before :meth:`start`)."""
        pool = self._engine.pool if self._engine is not None else None
        return pool_stats(pool, self._counters, size=self.pool_size, max_overflow=self.max_overflow)

    # --- schema (tests, demos; production uses migrations) ---------------------------------------------

    async def create_all(self, metadata: MetaData) -> None:
        """Create every table of ``metadata`` that does not exist yet (use migrations in production)."""
        await self._run_sync(metadata.create_all)

    async def drop_all(self, metadata: MetaData) -> None:
        """Drop every table of ``metadata`` that exists."""
        await self._run_sync(metadata.drop_all)

    async def _run_sync(self, fn: Callable[..., Any]) -> None:
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(fn)
        except Exception as exc:
            if is_db_error(exc):
                raise translate_db_error(exc, self.dialect, database=self.name) from exc
            raise

    # --- units of work ---------------------------------------------------------------------------------

    def transaction(self, *, isolation_level: IsolationLevel | None = None) -> Transaction:
        """Open a unit of work: ``async with db.transaction() as unit:``.

        The outermost one begins a transaction in a new session, commits when the block ends and rolls
        back if it raises; :meth:`UnitOfWork.on_commit` callbacks run after the commit. Inside an active
        one (same database, same task) it is a SAVEPOINT: an exception rolls back only the inner block
        and propagates. ``isolation_level`` applies to the outermost transaction only.
        """
        return Transaction(self, isolation_level)

    def session(self) -> SessionScope:
        """Join the active unit of work, or run a short transaction: ``async with db.session() as s:``.

        Inside :meth:`transaction` it yields that unit's session (no SAVEPOINT; the unit commits).
        Outside, it commits when the block ends. Repositories use it for every operation.
        """
        return SessionScope(self)

    def current(self) -> UnitOfWork | None:
        """Return the innermost active unit of work of this database in this task, or ``None``."""
        return current_unit(self)

    async def run_in_transaction(
        self,
        fn: Callable[[UnitOfWork], Awaitable[T]],
        *,
        attempts: int = 3,
        base_delay: float = 0.02,
        max_delay: float = 0.5,
        isolation_level: IsolationLevel | None = None,
    ) -> T:
        """Run ``fn(unit)`` in a transaction, rerunning it on :class:`TransactionConflictError`.

        See :func:`~mainspring.db.retry_on_conflict` for the backoff; like it, this runs ``fn`` once when
        a transaction is already active.
        """

        @retry_on_conflict(attempts, base_delay=base_delay, max_delay=max_delay)
        async def attempt() -> T:
            async with self.transaction(isolation_level=isolation_level) as unit:
                return await fn(unit)

        return await attempt()


def _as_unavailable(exc: Exception, database: Database) -> MainspringError:
    error = translate_db_error(exc, database.dialect, database=database.name)
    if isinstance(error, ServiceUnavailableError):
        return error
    return ServiceUnavailableError(
        f"database {database.name!r} failed a health check: {error.message}",
        code="db_unavailable",
        details=error.details,
    )


def _check_positive(**values: float | None) -> None:
    bad = [f"{name}={value!r}" for name, value in values.items() if value is not None and value <= 0]
    if bad:
        raise ConfigError(f"database options must be positive: {', '.join(bad)}")
