"""A cache of SQL query results, invalidated automatically when a write through the data layer commits.

::

    qc = QueryCache(db, cache, ttl=60)
    async with qc:
        rows = await qc.fetch(select(users).where(users.c.id == 1))  # [{"id": 1, "email": ...}]
        async with db.transaction() as unit:
            await unit.session.execute(update(users).values(email="b@example.com"))
        rows = await qc.fetch(select(users).where(users.c.id == 1))  # read again: users changed

Keys are ``{prefix}{name}:{sha256}`` where the digest covers the statement compiled for the database's
dialect (bind values kept out of the SQL) and the canonical form of every bind value; ``name`` is
``fetch(name=...)`` or the sorted table names. Each table has a version in the cache (a cache tag
``table:{name}``); a result carries the versions of the tables it read, so it is stale as soon as one
of them changes, in every process sharing the cache.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.sql import ClauseElement, Executable, TableClause, visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from mainspring._lifecycle import AsyncLifecycle
from mainspring.cache._keys import canonical
from mainspring.cache._protocols import Cache
from mainspring.errors import NotFoundError, ValidationError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from mainspring.db import Database

__all__ = ["CacheMissError", "QueryCache", "QueryCacheMode", "Rows"]

log = get_logger("mainspring.cache")

#: A query result: one dict per row, keyed by column label, in the order the database returned them.
Rows = list[dict[str, Any]]

_TOUCHED = "mainspring.cache.query:tables"


class QueryCacheMode(enum.Enum):
    """Where :meth:`QueryCache.fetch` looks first."""

    #: The cached result if it is fresh, else run the query once (whatever the concurrency) and cache it.
    CACHE_FIRST = "cache_first"
    #: Always run the query and refresh the cached result (for reads that must see the latest rows).
    DB_FIRST = "db_first"
    #: Only the cache: a fresh result, or :class:`CacheMissError` (the database is never queried).
    CACHE_ONLY = "cache_only"


class CacheMissError(NotFoundError):
    """``QueryCacheMode.CACHE_ONLY`` found no fresh cached result (404)."""

    code = "cache_miss"


def statement_tables(statement: ClauseElement) -> frozenset[str]:
    """Return the names of the tables ``statement`` reads or writes (subqueries and joins included)."""
    names = set()
    for element in visitors.iterate(statement):
        if isinstance(element, TableClause) and element.name:
            names.add(_table_name(element))
    return frozenset(names)


def _clause(statement: Executable) -> ClauseElement:
    if not isinstance(statement, ClauseElement):
        raise ValidationError(f"the query cache needs a SQLAlchemy statement, got {type(statement).__name__}")
    return statement


def _table_name(table: TableClause) -> str:
    schema = table.schema if isinstance(table, Table) else None
    return f"{schema}.{table.name}" if schema else table.name


class QueryCache(AsyncLifecycle):
    """Cached results of SQL statements run on ``db``, kept in ``cache``.

    :meth:`start` (or ``async with``) hooks the database's sessions so that any insert, update or delete
    made through them (ORM flushes, ``session.execute(insert(...)/update(...)/delete(...))``) bumps the
    version of the touched tables *after* the commit; rolled-back work bumps nothing. Writes the hook
    cannot see (``text()`` DML, another program) need :meth:`invalidate_table`. Inside an active unit of
    work, :meth:`fetch` runs the query in that transaction and neither reads nor writes the cache (its
    uncommitted rows must not leak to others).
    """

    def __init__(self, db: Database, cache: Cache, *, ttl: float | None = 300.0, prefix: str = "qc:") -> None:
        """Configure the query cache; nothing is hooked before :meth:`start`."""
        if not prefix or ":" not in prefix[-1:]:
            raise ValidationError(f"query cache prefix {prefix!r} must end with ':' (e.g. 'qc:')")
        self._db = db
        self._cache = cache
        self._ttl = ttl
        self._prefix = prefix
        self._pending: set[str] = set()
        self._bumps: set[asyncio.Task[None]] = set()
        self._hooked = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Hook the session events that track written tables."""
        if not self._hooked:
            event.listen(Session, "do_orm_execute", self._on_execute)
            event.listen(Session, "after_flush", self._on_flush)
            event.listen(Session, "after_commit", self._on_commit)
            event.listen(Session, "after_transaction_end", self._on_end)
            self._hooked = True

    async def stop(self) -> None:
        """Unhook the events and apply the table bumps still pending."""
        if self._hooked:
            event.remove(Session, "do_orm_execute", self._on_execute)
            event.remove(Session, "after_flush", self._on_flush)
            event.remove(Session, "after_commit", self._on_commit)
            event.remove(Session, "after_transaction_end", self._on_end)
            self._hooked = False
        await self._apply_bumps()
        if self._bumps:
            await asyncio.wait(set(self._bumps))

    # --- session events (sync, inside SQLAlchemy's greenlet) ----------------------------------------

    def _ours(self, session: Session) -> bool:
        return self._db.started and session.bind is self._db.engine.sync_engine

    def _touch(self, session: Session, tables: Iterable[str]) -> None:
        session.info.setdefault(_TOUCHED, set()).update(tables)

    def _on_execute(self, state: ORMExecuteState) -> None:
        if (state.is_insert or state.is_update or state.is_delete) and self._ours(state.session):
            statement = state.statement
            if isinstance(statement, UpdateBase):
                self._touch(state.session, statement_tables(statement.table))

    def _on_flush(self, session: Session, _flush_context: object) -> None:
        if not self._ours(session):
            return
        tables: set[str] = set()
        for obj in (*session.new, *session.dirty, *session.deleted):
            for table in inspect(obj).mapper.tables:
                tables.add(_table_name(table))
        self._touch(session, tables)

    def _on_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            # A released SAVEPOINT: its writes are not visible to others before the outer commit.
            return
        tables = session.info.pop(_TOUCHED, None)
        if not tables or not self._ours(session):
            return
        # Recorded now, before the caller's code resumes, so this process's next fetch applies them
        # first; the task makes other processes see them without waiting for that fetch.
        self._pending.update(tables)
        task = asyncio.get_running_loop().create_task(self._apply_bumps(), name="mainspring.cache:query-bump")
        self._bumps.add(task)
        task.add_done_callback(self._bump_done)

    def _on_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the root transaction ended without a commit: drop what it touched
            session.info.pop(_TOUCHED, None)

    def _bump_done(self, task: asyncio.Task[None]) -> None:
        self._bumps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("query cache table bump failed", error=str(task.exception()))

    async def _apply_bumps(self) -> None:
        if self._pending:
            tables, self._pending = self._pending, set()
            await self._cache.invalidate_tags(*(self._tag(t) for t in sorted(tables)))

    # --- reading ------------------------------------------------------------------------------------

    @staticmethod
    def _tag(table: str) -> str:
        return f"table:{table}"

    def key(self, statement: Executable, params: Mapping[str, Any] | None = None, *, name: str = "") -> str:
        """Return the cache key of ``statement`` with ``params`` (compiled for the database's dialect)."""
        compiled = _clause(statement).compile(dialect=self._db.engine.dialect)
        binds = {**compiled.params, **(params or {})}
        digest = hashlib.sha256(f"{compiled}\x00{canonical(binds)}".encode()).hexdigest()
        label = name or "+".join(sorted(statement_tables(_clause(statement)))) or "sql"
        return f"{self._prefix}{label}:{digest}"

    async def fetch(
        self,
        statement: Executable,
        params: Mapping[str, Any] | None = None,
        *,
        mode: QueryCacheMode = QueryCacheMode.CACHE_FIRST,
        ttl: float | None = None,
        tables: Iterable[str] | None = None,
        name: str = "",
    ) -> Rows:
        """Return the rows of ``statement`` (list of dicts), from the cache or the database per ``mode``.

        ``tables`` overrides the tables the result depends on (required for ``text()`` statements, whose
        tables cannot be seen); ``name`` prefixes the key (see :meth:`invalidate_pattern`).
        CACHE_ONLY raises :class:`CacheMissError` when no fresh result is cached.
        """
        await self._apply_bumps()
        depends = frozenset(tables) if tables is not None else statement_tables(_clause(statement))
        if tables is None and isinstance(statement, TextClause):
            raise ValidationError(
                "a text() statement hides the tables it reads; pass tables=[...] so the cached result "
                "can be invalidated when they change"
            )
        if self._db.current() is not None:
            return await self._query(statement, params)
        key = self.key(statement, params, name=name)
        tags = [self._tag(t) for t in sorted(depends)]
        ttl = self._ttl if ttl is None else ttl
        if mode is QueryCacheMode.CACHE_ONLY:
            missing = object()
            found = await self._cache.get(key, missing)
            if found is missing:
                raise CacheMissError(
                    "no fresh cached result for this query; use CACHE_FIRST to read the database on a miss",
                    details={"key": key},
                )
            return list(found)
        if mode is QueryCacheMode.DB_FIRST:
            await self._cache.delete(key)
        rows: Rows = await self._cache.get_or_set(
            key, lambda: self._query(statement, params), ttl=ttl, tags=tags
        )
        return rows

    async def _query(self, statement: Executable, params: Mapping[str, Any] | None) -> Rows:
        async with self._db.session() as session:
            result = await session.execute(statement, dict(params) if params else None)
            return [dict(row._mapping) for row in result]

    # --- invalidation -------------------------------------------------------------------------------

    async def invalidate_query(
        self, statement: Executable, params: Mapping[str, Any] | None = None, *, name: str = ""
    ) -> bool:
        """Drop the cached result of ``statement`` with ``params``; return whether one was cached."""
        return await self._cache.delete(self.key(statement, params, name=name))

    async def invalidate_table(self, *tables: str | Table) -> None:
        """Make every cached result that read one of ``tables`` stale (in every process)."""
        names = [t if isinstance(t, str) else _table_name(t) for t in tables]
        await self._cache.invalidate_tags(*(self._tag(n) for n in names))

    async def invalidate_pattern(self, prefix: str) -> int:
        """Drop the cached results whose name starts with ``prefix`` (``"users"``, ``"orders+"``)."""
        return await self._cache.clear(f"{self._prefix}{prefix}")
