"""Units of work: transactions, SAVEPOINTs, commit callbacks and reruns on conflicts.

The active units live in one context variable as an immutable tuple, so each asyncio task (which copies
the context when it is created) sees the units of the code that created it and its own, never those of a
sibling. A unit is found by its :class:`~mainspring.db.Database`, so transactions on two databases nest
independently.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

from mainspring.db._errors import TransactionConflictError, is_db_error, translate_db_error
from mainspring.errors import InternalError, MainspringError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from mainspring.db._database import Database

__all__ = ["IsolationLevel", "SessionScope", "Transaction", "UnitOfWork", "active_units", "retry_on_conflict"]

P = ParamSpec("P")
T = TypeVar("T")
RepoT = TypeVar("RepoT")

#: Isolation levels a transaction may ask for (SQLite honours SERIALIZABLE and READ UNCOMMITTED).
IsolationLevel = Literal["SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"]

CommitCallback = Callable[[], Awaitable[None] | None]

_UNITS: ContextVar[tuple[UnitOfWork, ...]] = ContextVar("mainspring_db_units", default=())
_log = get_logger("mainspring.db")


def active_units() -> tuple[UnitOfWork, ...]:
    """Return the units of work active in this context, outermost first (all databases)."""
    return _UNITS.get()


def current_unit(database: Database) -> UnitOfWork | None:
    """Return the innermost active unit of work of ``database`` in this context, if any."""
    for unit in reversed(_UNITS.get()):
        if unit.database is database:
            return unit
    return None


class UnitOfWork:
    """One transaction (or SAVEPOINT inside one) of a :class:`~mainspring.db.Database`.

    ``session`` is the :class:`~sqlalchemy.ext.asyncio.AsyncSession` that every repository of this
    database uses while the unit is active. A unit is not safe for concurrent use: don't share it
    between tasks running at the same time (``asyncio.gather``); give each task its own transaction.
    """

    __slots__ = ("_callbacks", "_finished", "_repositories", "_user", "database", "parent", "session")

    def __init__(self, database: Database, session: AsyncSession, parent: UnitOfWork | None = None) -> None:
        self.database = database
        self.session = session
        #: The enclosing unit when this one is a SAVEPOINT, else ``None``.
        self.parent = parent
        self._callbacks: list[CommitCallback] = []
        self._repositories: dict[Callable[[Database], Any], Any] = {}
        self._finished = False
        # The task inside a joined session() right now; another task joining meanwhile is refused.
        self._user: asyncio.Task[Any] | None = None

    @property
    def nested(self) -> bool:
        """Say whether this unit is a SAVEPOINT inside another one."""
        return self.parent is not None

    def on_commit(self, callback: CommitCallback) -> None:
        """Run ``callback`` (sync or async, no arguments) after the outermost transaction commits.

        Not run on rollback. In a nested unit, the callback moves to the enclosing unit when the
        SAVEPOINT is released and is dropped if the SAVEPOINT rolls back. A callback that raises is
        logged and does not stop the others: the data is committed by then.
        """
        if self._finished:
            raise InternalError("on_commit() on a finished unit of work; register callbacks inside the block")
        self._callbacks.append(callback)

    async def flush(self) -> None:
        """Send pending changes to the database now (constraint violations surface here, translated)."""
        try:
            await self.session.flush()
        except Exception as exc:
            if is_db_error(exc):
                raise translate_db_error(exc, self.database.dialect, database=self.database.name) from exc
            raise

    def repository(self, repo: Callable[[Database], RepoT]) -> RepoT:
        """Return the repository ``repo`` (a class taking the database) for this unit, made once per unit."""
        found = self._repositories.get(repo)
        if found is None:
            found = self._repositories[repo] = repo(self.database)
        return found

    def __repr__(self) -> str:
        kind = "savepoint" if self.parent is not None else "transaction"
        return f"<UnitOfWork {kind} on database {self.database.name!r}>"


class Transaction:
    """``async with database.transaction() as unit``: begin, then commit or roll back on exit."""

    __slots__ = ("_database", "_isolation", "_savepoint", "_token", "_unit")

    def __init__(self, database: Database, isolation_level: IsolationLevel | None = None) -> None:
        self._database = database
        self._isolation = isolation_level
        self._unit: UnitOfWork | None = None
        self._savepoint: AsyncSessionTransaction | None = None
        self._token: Token[tuple[UnitOfWork, ...]] | None = None

    async def __aenter__(self) -> UnitOfWork:
        database = self._database
        parent = current_unit(database)
        if parent is None:
            session = database.session_factory()
            unit = UnitOfWork(database, session)
            if self._isolation is not None:
                # Asking for the connection now pins the isolation level before the first statement.
                try:
                    await session.connection(execution_options={"isolation_level": self._isolation})
                except Exception as exc:  # noqa: BLE001 - _raise re-raises it, translated
                    await _discard(session)
                    _raise(exc, database)
        else:
            if self._isolation is not None:
                raise InternalError(
                    "a nested transaction (SAVEPOINT) cannot change the isolation level; "
                    "set it on the outermost transaction"
                )
            unit = UnitOfWork(database, parent.session, parent)
            try:
                self._savepoint = await parent.session.begin_nested()
            except Exception as exc:  # noqa: BLE001 - _raise re-raises it, translated
                _raise(exc, database)
        self._unit = unit
        self._token = _UNITS.set((*_UNITS.get(), unit))
        return unit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        unit, token = self._unit, self._token
        assert unit is not None, "transaction exited without being entered"
        assert token is not None
        _UNITS.reset(token)
        unit._finished = True
        if self._savepoint is not None:
            await self._exit_savepoint(unit, self._savepoint, exc)
        else:
            await self._exit_outermost(unit, exc)

    async def _exit_savepoint(
        self, unit: UnitOfWork, savepoint: AsyncSessionTransaction, exc: BaseException | None
    ) -> None:
        assert unit.parent is not None
        if exc is None:
            try:
                await savepoint.commit()
            except Exception as commit_exc:  # noqa: BLE001 - _raise re-raises it, translated
                _raise(commit_exc, self._database)
            unit.parent._callbacks.extend(unit._callbacks)
            return
        unit._callbacks.clear()
        # Roll back even when SQLAlchemy marked the savepoint inactive (a failed flush does): only the
        # explicit rollback returns the session to the outer transaction. Skip it once it is closed.
        if unit.session.sync_session.get_nested_transaction() is savepoint.sync_transaction:
            try:
                await savepoint.rollback()
            except Exception as rollback_exc:  # noqa: BLE001 - the original error matters; this one is logged
                # Usually the whole transaction is gone already (MySQL deadlock, lost connection).
                _log.warning(
                    "savepoint rollback failed",
                    database=self._database.name,
                    error=type(rollback_exc).__name__,
                )
        _reraise_translated(exc, self._database)

    async def _exit_outermost(self, unit: UnitOfWork, exc: BaseException | None) -> None:
        session = unit.session
        if exc is not None:
            await _discard(session)
            _reraise_translated(exc, self._database)
            return
        try:
            await session.commit()
        except BaseException as commit_exc:  # noqa: BLE001 - _raise re-raises it, translated
            await _discard(session)
            _raise(commit_exc, self._database)
        await session.close()
        await _run_callbacks(unit._callbacks, self._database.name)


class SessionScope:
    """``async with database.session() as session``: join the active unit of work or run a short one."""

    __slots__ = ("_database", "_joined", "_previous_user", "_transaction")

    def __init__(self, database: Database) -> None:
        self._database = database
        self._transaction: Transaction | None = None
        self._joined: UnitOfWork | None = None
        self._previous_user: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> AsyncSession:
        unit = current_unit(self._database)
        if unit is None:
            self._transaction = Transaction(self._database)
            return (await self._transaction.__aenter__()).session
        task = asyncio.current_task()
        user = unit._user
        if user is not None and user is not task and not user.done():
            # Tasks started inside a unit inherit it; an AsyncSession cannot serve two at once.
            raise InternalError(
                f"the unit of work of database {self._database.name!r} is in use by another task; "
                "concurrent tasks (asyncio.gather, create_task) must not share a transaction: "
                "start them outside it so that each opens its own"
            )
        self._joined, self._previous_user = unit, user
        unit._user = task
        return unit.session

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transaction is not None:
            await self._transaction.__aexit__(exc_type, exc, tb)
            return
        if self._joined is not None:
            self._joined._user = self._previous_user
        if exc is not None:
            # Joined: the enclosing unit decides commit or rollback; we only translate at the boundary.
            _reraise_translated(exc, self._database)


def _raise(exc: BaseException, database: Database) -> NoReturn:
    """Raise the translation of a driver error, or ``exc`` itself (already ours, or not from the driver)."""
    _reraise_translated(exc, database)
    raise exc


def _translated(exc: Exception, database: Database) -> MainspringError:
    return translate_db_error(exc, database.dialect, database=database.name)


def _reraise_translated(exc: BaseException, database: Database) -> None:
    """Raise the translation of a driver error; for anything else return, so ``exc`` propagates."""
    if isinstance(exc, Exception) and is_db_error(exc):
        raise _translated(exc, database) from exc


async def _discard(session: AsyncSession) -> None:
    """Roll back and close ``session``; a dead connection is invalidated instead of raising."""
    try:
        await session.rollback()
    except Exception as exc:  # noqa: BLE001 - connection lost: nothing left to roll back on the server
        _log.debug("rollback failed; invalidating the connection", error=type(exc).__name__)
        try:
            await session.invalidate()
        except Exception as invalidate_exc:  # noqa: BLE001 - best effort on a dead connection
            _log.debug("invalidate failed", error=type(invalidate_exc).__name__)
    finally:
        try:
            await session.close()
        except Exception as close_exc:  # noqa: BLE001 - e.g. still in use by a task that shared it
            _log.warning("closing the session failed", error=type(close_exc).__name__)


async def _run_callbacks(callbacks: list[CommitCallback], database: str) -> None:
    for callback in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - committed already; one failing callback must not stop the rest
            _log.exception("on_commit callback failed", database=database, callback=_name(callback))


def _name(callback: Callable[..., object]) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


def retry_on_conflict(
    attempts: int = 3, *, base_delay: float = 0.02, max_delay: float = 0.5
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async function that runs a unit of work, to rerun it on :class:`TransactionConflictError`.

    Serialization failures and deadlocks (PostgreSQL 40001/40P01, MySQL 1213/1205, a busy SQLite) make
    the function run again, up to ``attempts`` times in all, sleeping a random time up to
    ``base_delay * 2**n`` (capped at ``max_delay``) between runs. The function must open its own
    transaction: called inside an active one, it runs once and the error propagates, because only the
    outermost transaction can be rerun.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if _UNITS.get():
                return await fn(*args, **kwargs)
            for attempt in range(1, attempts + 1):
                try:
                    return await fn(*args, **kwargs)
                except TransactionConflictError as exc:
                    if attempt == attempts:
                        exc.details["attempts"] = attempts
                        raise
                    delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
                    _log.debug("transaction conflict; rerunning", attempt=attempt, delay=round(delay, 4))
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")  # pragma: no cover

        return wrapper

    return decorate
