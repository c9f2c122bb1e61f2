"""Bulk inserts for :class:`~mainspring.db.Repository`: ``add_many`` without the unit of work.

``add_many`` takes model instances, like ``session.add_all``, but when nothing needs the unit of work's
per-object bookkeeping it sends one Core ``INSERT`` for all of them (an ``executemany`` that SQLAlchemy
turns into multi-row ``VALUES`` batches: one round trip per 1,000 rows or so) and then gives the
instances their identity, as if they had been loaded (attached to the caller's unit of work when there
is one). For 1,000 rows that takes about two thirds of the unit of work's time. Whenever the shortcut
could behave differently from a flush (relationships set on the instances, mapper or flush listeners of
the application, server-side defaults that would have to be read back, inheritance) it is not taken and
the unit of work does the insert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table, insert
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.base import instance_state

from mainspring.db._changelog import (
    ChangeAction,
    _record_flush,
    audited_changes,
    is_audited,
    write_change_log,
)

__all__ = ["DefaultContext", "InsertPlan", "bulk_insert", "insert_plan"]


class DefaultContext:
    """Stands in for SQLAlchemy's execution context when column defaults are computed here.

    Column default callables that take a context get this: ``get_current_parameters()`` returns the
    row being built, and attributes set on it (``_statement_now`` caches its timestamp there) are shared
    by every row of one call, as they would be within one ``executemany``.
    """

    def __init__(self) -> None:
        self.current_parameters: dict[str, Any] = {}

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        """Return the values of the row being built."""
        return self.current_parameters


@dataclass(frozen=True, slots=True)
class _ColumnPlan:
    attr_key: str
    column_key: str
    default: Callable[[DefaultContext], Any] | None
    fixed: bool  # ``default`` holds a constant (returned without calling)
    constant: Any


@dataclass(frozen=True, slots=True)
class InsertPlan:
    """How to insert rows of one model without the unit of work (``None`` from :func:`insert_plan`: can't)."""

    table: Table
    columns: tuple[_ColumnPlan, ...]
    column_attrs: frozenset[str]
    pk_attr: str
    pk_column: Column[Any]
    pk_generated: bool  # the database makes the key (autoincrement): needs RETURNING
    version_attr: str | None
    initial_version: Any


_PLANS: dict[Mapper[Any], InsertPlan | None] = {}


def _column_plan(attr_key: str, column: Column[Any]) -> _ColumnPlan | None:
    default = column.default
    if default is None:
        return _ColumnPlan(attr_key, column.key, None, False, None)
    if getattr(default, "is_scalar", False):
        return _ColumnPlan(attr_key, column.key, None, True, default.arg)  # type: ignore[attr-defined]
    if getattr(default, "is_callable", False):
        return _ColumnPlan(attr_key, column.key, default.arg, False, None)  # type: ignore[attr-defined]
    return None  # a SQL expression or a sequence: only the database can compute it


def insert_plan(mapper: Mapper[Any]) -> InsertPlan | None:
    """Return the bulk insert plan for ``mapper``, or ``None`` when only the unit of work may insert it."""
    if mapper in _PLANS:
        return _PLANS[mapper]
    _PLANS[mapper] = plan = _make_plan(mapper)
    return plan


def _make_plan(mapper: Mapper[Any]) -> InsertPlan | None:
    if (
        mapper.inherits is not None
        or mapper.polymorphic_on is not None
        or not isinstance(mapper.local_table, Table)
    ):
        return None
    if len(mapper.primary_key) != 1 or mapper.version_id_generator is False:
        return None
    table = mapper.local_table
    columns: list[_ColumnPlan] = []
    pk_column = mapper.primary_key[0]
    if not isinstance(pk_column, Column):
        return None
    pk_attr = ""
    for prop in mapper.column_attrs:
        if len(prop.columns) != 1 or not isinstance(prop.columns[0], Column):
            return None
        column = prop.columns[0]
        if column.table is not table:
            return None
        if column is pk_column:
            pk_attr = prop.key
        server_side = column.server_default is not None or column.computed is not None or column.identity
        if server_side and column is not pk_column:
            return None  # would have to be read back after the INSERT
        plan = _column_plan(prop.key, column)
        if plan is None:
            return None
        columns.append(plan)
    pk_generated = table.autoincrement_column is pk_column
    version_attr = None
    initial_version: Any = None
    if mapper.version_id_col is not None:
        version_attr = mapper.get_property_by_column(mapper.version_id_col).key
        generator: Any = mapper.version_id_generator
        initial_version = generator(None)
    return InsertPlan(
        table=table,
        columns=tuple(columns),
        # The instance dict also holds SQLAlchemy's own state attribute; anything else is not a column.
        column_attrs=frozenset(p.attr_key for p in columns) | {mapper.class_manager.STATE_ATTR},
        pk_attr=pk_attr,
        pk_column=pk_column,
        pk_generated=pk_generated,
        version_attr=version_attr,
        initial_version=initial_version,
    )


def _has_foreign_listeners(session: Session, mapper: Mapper[Any]) -> bool:
    dispatch = mapper.dispatch
    if dispatch.before_insert or dispatch.after_insert:
        return True
    session_dispatch = session.dispatch
    if session_dispatch.before_flush or session_dispatch.after_flush_postexec:
        return True
    return any(fn is not _record_flush for fn in session_dispatch.after_flush)


def bulk_insert(session: Session, mapper: Mapper[Any], instances: Sequence[Any], attach: bool) -> bool:
    """Insert transient ``instances`` of ``mapper`` in one statement; ``False`` if only a flush may do it.

    Runs in ``AsyncSession.run_sync``. Afterwards the instances are detached with their identity, as if
    loaded and the session closed; with ``attach`` they are added to ``session`` as persistent (the
    caller's unit of work goes on using them). On ``False`` nothing was changed and the caller falls
    back to ``session.add_all``.
    """
    plan = insert_plan(mapper)
    if plan is None or _has_foreign_listeners(session, mapper):
        return False
    dialect = session.get_bind(mapper).dialect
    if plan.pk_generated and not dialect.insert_executemany_returning_sort_by_parameter_order:
        return False
    states = [instance_state(obj) for obj in instances]
    if len({id(s) for s in states}) != len(states):
        return False
    for state in states:
        if not state.transient or state.mapper is not mapper or not plan.column_attrs.issuperset(state.dict):
            return False  # already in a session, a subclass, or relationships/extra state to cascade
    if plan.pk_generated and any(s.dict.get(plan.pk_attr) is not None for s in states):
        return False  # some keys given, some not: the rows would not share one statement shape
    context = DefaultContext()
    rows: list[dict[str, Any]] = []
    for state in states:
        values = state.dict
        row: dict[str, Any] = {}
        context.current_parameters = row
        for column in plan.columns:
            value = values.get(column.attr_key)
            if value is None:
                # As in a flush: None on a column with a default means "use the default".
                if column.fixed:
                    value = column.constant
                elif column.default is not None:
                    value = column.default(context)
                elif column.attr_key == plan.version_attr:
                    value = plan.initial_version
                elif column.attr_key == plan.pk_attr and plan.pk_generated:
                    continue  # the database assigns it
            # Every column goes into the instance's state, so none is left expired (an expired
            # attribute would need a lazy load, which async code cannot do implicitly).
            values[column.attr_key] = row[column.column_key] = value
        rows.append(row)
    connection = session.connection(bind_arguments={"mapper": mapper})
    if plan.pk_generated:
        statement = insert(plan.table).returning(plan.pk_column, sort_by_parameter_order=True)
        keys = connection.execute(statement, rows).scalars().all()
        for state, key in zip(states, keys, strict=True):
            state.dict[plan.pk_attr] = key
    else:
        connection.execute(insert(plan.table), rows)
    for obj in instances:
        make_transient_to_detached(obj)
    if attach:
        session.add_all(instances)
    if is_audited(mapper.class_):
        write_change_log(
            session,
            mapper.class_,
            ((ChangeAction.INSERT, *audited_changes(mapper.class_, None, state.dict)) for state in states),
        )
    return True
