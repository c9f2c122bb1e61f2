"""Native upserts for :class:`~mainspring.db.Repository`: one statement per call, on every dialect.

PostgreSQL and SQLite get ``INSERT ... ON CONFLICT (columns) DO UPDATE SET ... RETURNING``, run as an
``executemany``; MySQL/MariaDB get ``INSERT ... VALUES (...), (...) ON DUPLICATE KEY UPDATE`` and a
read-back. A native upsert's UPDATE half runs no Python-side ``onupdate`` defaults and no version
check, so ``updated_at``/``updated_by`` are computed here and ``version`` goes up by one in SQL. For an
audited model the rows are read first, so the change log can record inserts and updates with the old
values.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Column, ColumnElement, Index, Table, UniqueConstraint, and_, or_, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from mainspring.db._bulk import DefaultContext
from mainspring.db._changelog import ChangeAction, audited_changes, write_change_log
from mainspring.db._mixins import INCLUDE_DELETED
from mainspring.errors import ValidationError

if TYPE_CHECKING:
    from mainspring.db._repository import ModelInfo

__all__ = ["onupdate_values", "unique_column_sets", "upsert_rows", "upsert_statement"]

_DIALECT_INSERT: Final[dict[str, Callable[[Any], Any]]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
}
_RELOAD: Final = {"populate_existing": True, INCLUDE_DELETED: True}


def unique_column_sets(table: Table) -> list[frozenset[str]]:
    """The column-name sets that are unique in ``table``: primary key, unique constraints, unique indexes."""
    sets = [frozenset(c.name for c in table.primary_key.columns)]
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            sets.append(frozenset(c.name for c in constraint.columns))
    for index in table.indexes:
        if isinstance(index, Index) and index.unique:
            sets.append(frozenset(c.name for c in index.columns if isinstance(c, Column)))
    return sets


def onupdate_values(table: Table, skip: set[str]) -> dict[str, Any]:
    """Values for the columns with an ``onupdate`` default, for the UPDATE half of an upsert.

    ``skip`` lists columns the caller sets itself.
    """
    context = DefaultContext()
    values: dict[str, Any] = {}
    for column in table.columns:
        onupdate: Any = column.onupdate
        if onupdate is None or column.key in skip:
            continue
        if onupdate.is_callable:
            values[column.key] = onupdate.arg(context)
        elif onupdate.is_scalar or onupdate.is_clause_element:
            values[column.key] = onupdate.arg
    return values


def upsert_statement(
    dialect_name: str,
    model: type[Any],
    rows: Sequence[Mapping[str, Any]],
    conflict: Sequence[str],
    update: Sequence[str],
    extra: Mapping[str, Any],
) -> tuple[Insert, Sequence[Mapping[str, Any]] | None]:
    """Build the native upsert of ``rows`` of ``model`` for ``dialect_name``; return it and its parameters.

    ``update`` columns take the new row's value on conflict; ``extra`` holds further ``SET`` values
    (constants or SQL expressions). On PostgreSQL and SQLite the statement returns the rows
    (``RETURNING``, in no particular order) and runs with ``rows`` as an ``executemany``; on
    MySQL/MariaDB the rows go into one multi-row ``VALUES`` (the driver's ``executemany`` rewriting
    cannot cope with parameters after ``VALUES``), the parameters are ``None``, and the caller reads
    the rows back.
    """
    statement = _DIALECT_INSERT[dialect_name](model)
    table: Table = model.__table__
    if dialect_name in ("mysql", "mariadb"):
        statement = statement.values(list(rows))
        set_mysql: dict[str, Any] = {name: statement.inserted[name] for name in update}
        set_mysql.update(extra)
        if not set_mysql:
            first = table.primary_key.columns.values()[0].name
            set_mysql[first] = table.c[first]
        return statement.on_duplicate_key_update(set_mysql), None
    set_: dict[str, ColumnElement[Any] | Any] = {name: statement.excluded[name] for name in update}
    set_.update(extra)
    if not set_:
        # DO NOTHING would return no row for an existing key; a no-op update returns it.
        set_[conflict[0]] = statement.excluded[conflict[0]]
    statement = statement.on_conflict_do_update(index_elements=[table.c[c] for c in conflict], set_=set_)
    return statement.returning(model), rows


def check_rows(info: ModelInfo, rows: Sequence[Mapping[str, Any]], conflict: Sequence[str]) -> None:
    """Refuse unknown fields, a ``conflict`` that is not a unique key, missing or repeated keys."""
    unknown = set().union(*rows) - set(info.columns)
    if unknown:
        raise ValidationError(
            f"cannot upsert {info.name}: unknown fields {', '.join(sorted(unknown))}",
            errors=[{"loc": [k], "msg": "unknown field", "type": "unknown_field"} for k in sorted(unknown)],
        )
    if not conflict or frozenset(conflict) not in unique_column_sets(info.table):
        raise ValidationError(
            f"conflict={builtins.list(conflict)!r} is not the primary key or a unique constraint of "
            f"{info.name}; name the columns of one",
            errors=[{"loc": ["conflict"], "msg": "not a unique key", "type": "not_unique"}],
        )
    for row in rows:
        missing = [c for c in conflict if row.get(c) is None]
        if missing:
            raise ValidationError(
                f"every row to upsert needs a value for {', '.join(missing)}",
                errors=[{"loc": [c], "msg": "required for upsert", "type": "missing"} for c in missing],
            )
    if len({tuple(row[c] for c in conflict) for row in rows}) != len(rows):
        raise ValidationError(
            f"two rows to upsert have the same {', '.join(conflict)}; give each key once",
            errors=[{"loc": builtins.list(conflict), "msg": "duplicate key", "type": "duplicate"}],
        )


def _key_filter(
    info: ModelInfo, rows: Sequence[Mapping[str, Any]], conflict: Sequence[str]
) -> ColumnElement[bool]:
    columns = [info.columns[c] for c in conflict]
    if len(columns) == 1:
        return columns[0].in_([row[conflict[0]] for row in rows])
    return or_(*(and_(*(col == row[c] for col, c in zip(columns, conflict, strict=True))) for row in rows))


def _fold(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(v.casefold() if isinstance(v, str) else v for v in key)


def _in_row_order(
    found: Sequence[Any], rows: Sequence[Mapping[str, Any]], conflict: Sequence[str]
) -> list[Any]:
    # RETURNING order cannot be tied to the parameters for rows that already existed (their key is not
    # the one the new row would have had), so rows are matched by conflict key; case-insensitively as a
    # second try, for MySQL/MariaDB collations that matched "Ada@x" to an existing "ada@x".
    exact = {tuple(getattr(obj, c) for c in conflict): obj for obj in found}
    folded = {_fold(key): obj for key, obj in exact.items()}
    result = []
    for row in rows:
        key = tuple(row[c] for c in conflict)
        obj = exact.get(key)
        result.append(obj if obj is not None else folded[_fold(key)])
    return result


async def upsert_rows(
    session: AsyncSession,
    info: ModelInfo,
    rows: Sequence[Mapping[str, Any]],
    conflict: Sequence[str],
    update: Sequence[str],
) -> list[Any]:
    """Upsert ``rows`` (checked) of ``info``'s model on ``session``; return the rows in the order given."""
    model = info.mapper.class_
    extra = onupdate_values(info.table, skip=set(update))
    if info.version_key is not None:
        extra[info.version_key] = info.columns[info.version_key] + 1
    before: dict[tuple[Any, ...], dict[str, Any]] = {}
    if info.audited:
        existing = await session.scalars(
            select(model).where(_key_filter(info, rows, conflict)), execution_options=_RELOAD
        )
        before = {
            tuple(getattr(o, c) for c in conflict): {k: getattr(o, k) for k in info.columns} for o in existing
        }
    statement, params = upsert_statement(
        session.get_bind().dialect.name, model, rows, conflict, update, extra
    )
    if params is None:
        await session.execute(statement)
        found = await session.scalars(
            select(model).where(_key_filter(info, rows, conflict)), execution_options=_RELOAD
        )
    else:
        found = await session.scalars(statement, params, execution_options={"populate_existing": True})
    result = _in_row_order(found.all(), rows, conflict)
    if info.audited:
        await session.run_sync(_log, model, info, before, result, conflict)
    return result


def _log(
    session: Session,
    model: type[Any],
    info: ModelInfo,
    before: Mapping[tuple[Any, ...], Mapping[str, Any]],
    result: Sequence[Any],
    conflict: Sequence[str],
) -> None:
    entries = []
    for obj in result:
        after = {k: getattr(obj, k) for k in info.columns}
        old = before.get(tuple(after[c] for c in conflict))
        if old is None:  # a case-insensitive collation may have matched a key spelled differently
            old = {_fold(k): v for k, v in before.items()}.get(_fold(tuple(after[c] for c in conflict)))
        action = ChangeAction.INSERT if old is None else ChangeAction.UPDATE
        entity_id, changes = audited_changes(model, old, after)
        if changes:
            entries.append((action, entity_id, changes))
    write_change_log(session, model, entries)
