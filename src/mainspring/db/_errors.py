"""Driver errors translated into :mod:`mainspring.errors` at the database boundary.

:class:`~mainspring.db.Database` calls :func:`translate_db_error` where work leaves it (the exit of a
transaction or session, ``start()``, ``ping()``), so callers never see an asyncpg, asyncmy, sqlite3 or
SQLAlchemy exception. The original stays attached as ``__cause__`` for logs and debuggers.

=======================================  ==========================================
driver error                             mainspring error
=======================================  ==========================================
unique violation                         ConflictError (constraint / columns named)
foreign key, not null, check, bad value  ValidationError
serialization failure, deadlock, lock    TransactionConflictError (retryable)
connection refused, lost, pool timeout   ServiceUnavailableError
statement timeout                        DeadlineExceededError
stale version (optimistic locking)       ConflictError
anything else                            InternalError (message not shown to clients)
=======================================  ==========================================
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError

from mainspring.db._url import Dialect
from mainspring.errors import (
    ConflictError,
    DeadlineExceededError,
    GrpcStatus,
    InternalError,
    MainspringError,
    ServiceUnavailableError,
    ValidationError,
)

__all__ = ["TransactionConflictError", "driver_message", "is_db_error", "translate_db_error"]

_MAX_DRIVER_MESSAGE = 200


class TransactionConflictError(ConflictError):
    """The transaction lost a race (serialization failure, deadlock, lock timeout) and may succeed if rerun.

    :func:`~mainspring.db.retry_on_conflict` and :meth:`~mainspring.db.Database.run_in_transaction`
    rerun the whole unit of work when they see it.
    """

    code = "transaction_conflict"
    grpc_status = GrpcStatus.ABORTED


@dataclass(slots=True)
class _Facts:
    """What the driver told us, whichever driver it was."""

    kind: str = "other"
    constraint: str | None = None
    table: str | None = None
    columns: list[str] = field(default_factory=list)
    code: str | None = None
    message: str = ""


def is_db_error(exc: BaseException) -> bool:
    """Say whether ``exc`` comes from SQLAlchemy or a database driver (and so must be translated)."""
    if isinstance(exc, sa_exc.SQLAlchemyError | sqlite3.Error):
        return True
    module = type(exc).__module__
    return module.startswith(("asyncpg", "asyncmy", "aiosqlite"))


def translate_db_error(exc: BaseException, dialect: Dialect, *, database: str = "default") -> MainspringError:
    """Return the :class:`MainspringError` that stands for driver or SQLAlchemy error ``exc``.

    ``database`` is the name of the :class:`~mainspring.db.Database`, used in messages. Raise the result
    ``from exc``. A :class:`MainspringError` is returned unchanged.
    """
    if isinstance(exc, MainspringError):
        return exc
    where = f"database {database!r}"
    if isinstance(exc, StaleDataError):
        return ConflictError(
            f"the row was changed by someone else since it was read ({where}); reload it and retry",
            code="stale_version",
        )
    if isinstance(exc, sa_exc.TimeoutError):
        return ServiceUnavailableError(
            f"no free connection in the pool of {where} within the pool timeout; "
            "raise pool_size/max_overflow or shorten transactions",
            code="db_pool_exhausted",
        )
    facts = _facts(exc, dialect)
    details: dict[str, Any] = {"database": database}
    if facts.code:
        details["driver_code"] = facts.code
    invalidated = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    if invalidated or facts.kind == "unavailable" or isinstance(exc, OSError):
        return ServiceUnavailableError(
            f"lost the connection to {where} or could not open one ({facts.message}); retry later",
            code="db_unavailable",
            details=details,
        )
    if facts.kind == "conflict":
        return TransactionConflictError(
            f"the transaction on {where} conflicted with a concurrent one ({facts.message}); rerun it",
            details=details,
        )
    if facts.kind == "timeout":
        return DeadlineExceededError(
            f"a statement on {where} ran past the statement timeout and was cancelled",
            code="db_statement_timeout",
            details=details,
        )
    return _integrity_error(facts, where, details) or InternalError(
        f"unexpected error from {where}: {type(exc).__name__}: {facts.message}",
        code="db_error",
        details=details,
    )


def _integrity_error(facts: _Facts, where: str, details: dict[str, Any]) -> MainspringError | None:
    if facts.constraint:
        details["constraint"] = facts.constraint
    if facts.table:
        details["table"] = facts.table
    if facts.columns:
        details["columns"] = facts.columns
    on = _describe(facts)
    loc: list[str] = facts.columns[:1] if facts.columns else []
    if facts.kind == "unique":
        return ConflictError(
            f"a row with the same value already exists: unique constraint {on} violated; "
            "use another value or update the existing row",
            code="unique_violation",
            details=details,
        )
    if facts.kind == "integrity":
        return ConflictError(
            f"the change violates constraint {on}", code="constraint_violation", details=details
        )
    if facts.kind == "foreign_key":
        msg = f"a referenced row is missing or still referenced: foreign key {on} violated"
        errors = [{"loc": loc, "msg": msg, "type": "foreign_key"}]
        return ValidationError(msg, errors=errors, code="foreign_key_violation", details=details)
    if facts.kind == "not_null":
        msg = f"a required value is missing: {on} must not be null"
        errors = [{"loc": loc, "msg": "must not be null", "type": "not_null"}]
        return ValidationError(msg, errors=errors, code="not_null_violation", details=details)
    if facts.kind == "check":
        msg = f"a value is not allowed: check constraint {on} failed"
        return ValidationError(
            msg, errors=[{"loc": loc, "msg": msg, "type": "check"}], code="check_violation", details=details
        )
    if facts.kind == "data":
        msg = f"a value does not fit its column ({facts.message})"
        return ValidationError(
            msg, errors=[{"loc": loc, "msg": msg, "type": "data"}], code="invalid_value", details=details
        )
    return None


def _describe(facts: _Facts) -> str:
    name = repr(facts.constraint) if facts.constraint else ""
    if facts.table and facts.columns:
        target = f"{facts.table}({', '.join(facts.columns)})"
    elif facts.columns:
        target = ", ".join(facts.columns)
    else:
        target = facts.table or ""
    if name and target:
        return f"{name} on {target}"
    return name or target or "(unnamed)"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and the driver errors wrapped in it (SQLAlchemy and adapter ``orig``, causes)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nxt = getattr(current, "orig", None)
        current = nxt if isinstance(nxt, BaseException) else current.__cause__


def driver_message(exc: BaseException, dialect: Dialect) -> str:
    """Return the driver's one-line message for ``exc`` (duplicate values and SQL text left out)."""
    return _facts(exc, dialect).message


def _facts(exc: BaseException, dialect: Dialect) -> _Facts:
    chain = list(_chain(exc))
    driver = chain[-1]
    facts = _Facts(message=_first_line(driver))
    if dialect == "postgresql":
        _postgres_facts(chain, facts)
    elif dialect == "mysql":
        _mysql_facts(chain, facts)
    else:
        _sqlite_facts(driver, facts)
    if facts.kind == "other" and any(isinstance(e, sa_exc.IntegrityError) for e in chain):
        facts.kind = "integrity"
    return facts


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.CancelledError):
        return "timed out"
    text = str(exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text[:_MAX_DRIVER_MESSAGE]


# --- PostgreSQL (asyncpg): SQLSTATE codes and structured fields ---------------------------------------

_PG_KINDS = {
    "23505": "unique",
    "23503": "foreign_key",
    "23502": "not_null",
    "23514": "check",
    "23P01": "integrity",
    "40001": "conflict",
    "40P01": "conflict",
    "55P03": "conflict",
    "57014": "timeout",
    "57P01": "unavailable",
    "57P02": "unavailable",
    "57P03": "unavailable",
    "53300": "unavailable",
    "28000": "unavailable",
    "28P01": "unavailable",
    "3D000": "unavailable",
}
_PG_KEY_COLUMNS = re.compile(r"Key \((?P<cols>[^)]*)\)")


def _postgres_facts(chain: list[BaseException], facts: _Facts) -> None:
    for err in chain:
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            facts.code = sqlstate
        for attr in ("constraint_name", "table_name", "column_name"):
            value = getattr(err, attr, None)
            if isinstance(value, str) and value:
                if attr == "constraint_name":
                    facts.constraint = value
                elif attr == "table_name":
                    facts.table = value
                else:
                    facts.columns = [value]
        detail = getattr(err, "detail", None)
        if isinstance(detail, str) and not facts.columns and (match := _PG_KEY_COLUMNS.search(detail)):
            facts.columns = [c.strip().strip('"') for c in match.group("cols").split(",")]
    if facts.code is None:
        if any(type(e).__name__ in {"ConnectionDoesNotExistError", "InterfaceError"} for e in chain):
            facts.kind = (
                "unavailable" if "closed" in facts.message or "connection" in facts.message else "other"
            )
        return
    facts.kind = _PG_KINDS.get(facts.code, "other")
    if facts.kind == "other" and facts.code.startswith("08"):
        facts.kind = "unavailable"
    elif facts.kind == "other" and facts.code.startswith("22"):
        facts.kind = "data"


# --- MySQL / MariaDB (asyncmy): error numbers and message patterns -----------------------------------

_MYSQL_KINDS = {
    1062: "unique",
    1451: "foreign_key",
    1452: "foreign_key",
    1216: "foreign_key",
    1217: "foreign_key",
    1048: "not_null",
    1364: "not_null",
    3819: "check",
    4025: "check",
    1213: "conflict",
    1205: "conflict",
    1969: "timeout",
    3024: "timeout",
    1040: "unavailable",
    1045: "unavailable",
    1049: "unavailable",
    1053: "unavailable",
    1927: "unavailable",
    2002: "unavailable",
    2003: "unavailable",
    2005: "unavailable",
    2006: "unavailable",
    2013: "unavailable",
    2055: "unavailable",
    1264: "data",
    1265: "data",
    1292: "data",
    1366: "data",
    1406: "data",
}
_MYSQL_KEY = re.compile(r"for key '(?:[^'.]*\.)?(?P<key>[^']+)'")
_MYSQL_FK = re.compile(
    r"\(`[^`]*`\.`(?P<table>[^`]+)`, CONSTRAINT `(?P<name>[^`]+)` FOREIGN KEY \((?P<cols>[^)]*)\)"
)
_MYSQL_COLUMN = re.compile(r"(?:Column|Field) '(?P<col>[^']+)'")
_MYSQL_CHECK = re.compile(
    r"(?:Check constraint '(?P<a>[^']+)'|CONSTRAINT `(?P<b>[^`]+)` failed for `[^`]*`\.`(?P<t>[^`]+)`)"
)


def _mysql_facts(chain: list[BaseException], facts: _Facts) -> None:
    errno: int | None = None
    for err in chain:
        # The first number is the server's or client's error code; a later one is an OS errno.
        if err.args and isinstance(err.args[0], int):
            errno = err.args[0]
            break
    if errno is None:
        if "not connected" in facts.message.lower() or "lost connection" in facts.message.lower():
            facts.kind = "unavailable"
        return
    facts.code = str(errno)
    facts.kind = _MYSQL_KINDS.get(errno, "other")
    text = facts.message
    if facts.kind == "unique" and (m := _MYSQL_KEY.search(text)):
        facts.constraint = m.group("key")
        # The message quotes the duplicate value; keep it out of what we show.
        facts.message = f"duplicate entry for key {facts.constraint!r}"
    elif facts.kind == "foreign_key" and (m := _MYSQL_FK.search(text)):
        facts.constraint, facts.table = m.group("name"), m.group("table")
        facts.columns = [c.strip().strip("`") for c in m.group("cols").split(",")]
    elif facts.kind == "not_null" and (m := _MYSQL_COLUMN.search(text)):
        facts.columns = [m.group("col")]
    elif facts.kind == "check" and (m := _MYSQL_CHECK.search(text)):
        facts.constraint = m.group("a") or m.group("b")
        facts.table = m.group("t")
    elif facts.kind == "data" and (m := _MYSQL_COLUMN.search(text)):
        facts.columns = [m.group("col")]


# --- SQLite (sqlite3 via aiosqlite): extended result codes and message patterns ----------------------

_SQLITE_PATTERNS = (
    (re.compile(r"UNIQUE constraint failed: (?P<cols>.+)"), "unique"),
    (re.compile(r"NOT NULL constraint failed: (?P<cols>.+)"), "not_null"),
    (re.compile(r"FOREIGN KEY constraint failed"), "foreign_key"),
    (re.compile(r"CHECK constraint failed: (?P<name>.+)"), "check"),
    (re.compile(r"database (?:table )?is locked"), "conflict"),
    (re.compile(r"unable to open database file|disk I/O error"), "unavailable"),
)


def _sqlite_facts(driver: BaseException, facts: _Facts) -> None:
    name = getattr(driver, "sqlite_errorname", None)
    if isinstance(name, str):
        facts.code = name
    for pattern, kind in _SQLITE_PATTERNS:
        match = pattern.search(facts.message)
        if match is None:
            continue
        facts.kind = kind
        groups = match.groupdict()
        if groups.get("cols"):
            qualified = [c.strip() for c in groups["cols"].split(",")]
            facts.table = qualified[0].rpartition(".")[0] or None
            facts.columns = [c.rpartition(".")[2] for c in qualified]
        if groups.get("name"):
            facts.constraint = groups["name"].strip()
        return
    if facts.code in {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT"}:
        facts.kind = "conflict"
