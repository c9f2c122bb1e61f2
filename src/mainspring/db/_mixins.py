"""Model mixins: primary keys, timestamps, audit columns, soft delete and optimistic locking.

Mix them into a model before :class:`~mainspring.db.Base`::

    class Order(UUIDPrimaryKey, Timestamps, AuditColumns, SoftDelete, Versioned, Base):
        __tablename__ = "orders"
        total: Mapped[int]

The behaviour behind them lives in two session-wide ORM listeners registered on import: one leaves
soft-deleted rows out of every ORM query, the other refuses naive datetimes on assignment. Both only act
on models that use the mixins (or :class:`~mainspring.db.UTCDateTime` columns) and cost one dictionary
lookup otherwise.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

from sqlalchemy import BigInteger, Integer, String, Uuid, event
from sqlalchemy.engine.interfaces import ExecutionContext
from sqlalchemy.orm import (
    Mapped,
    Mapper,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.orm.attributes import QueryableAttribute

from mainspring.context import get_context
from mainspring.db._types import UTCDateTime, require_aware, utcnow, uuid7

__all__ = [
    "INCLUDE_DELETED",
    "AuditColumns",
    "IntPrimaryKey",
    "SoftDelete",
    "Timestamps",
    "UUIDPrimaryKey",
    "Versioned",
    "current_actor",
]

#: The execution option that shows soft-deleted rows:
#: ``select(Order).execution_options(include_deleted=True)``.
INCLUDE_DELETED: Final = "include_deleted"

#: Length of the ``created_by`` / ``updated_by`` columns (principal ids longer than this are cut).
ACTOR_LENGTH: Final = 255


class UUIDPrimaryKey:
    """An ``id`` primary key holding a time-ordered UUIDv7, generated in Python when a row is inserted.

    Stored as ``UUID`` on PostgreSQL and ``CHAR(32)`` elsewhere. Known before the INSERT, so bulk inserts
    need no ``RETURNING`` to learn it.
    """

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7, sort_order=-100)


class IntPrimaryKey:
    """An auto-incrementing integer ``id`` primary key (``BIGINT``; ``INTEGER`` rowid on SQLite)."""

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True, sort_order=-100
    )


def _statement_now(context: ExecutionContext) -> dt.datetime:
    # One timestamp per statement execution: created_at and updated_at of a new row are equal, and all
    # rows of one bulk insert share it, instead of drifting apart by microseconds.
    now: dt.datetime | None = getattr(context, "_mainspring_now", None)
    if now is None:
        now = utcnow()
        context._mainspring_now = now  # type: ignore[attr-defined]
    return now


class Timestamps:
    """``created_at`` and ``updated_at``: aware UTC, set on insert; ``updated_at`` again on every update."""

    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, nullable=False, default=_statement_now, sort_order=90
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, nullable=False, default=_statement_now, onupdate=_statement_now, sort_order=91
    )


def current_actor() -> str | None:
    """Return the id of the principal in :mod:`mainspring.context`, or ``None`` when nobody is bound."""
    principal = get_context().principal
    if principal is None:
        return None
    return principal.id[:ACTOR_LENGTH]


class AuditColumns:
    """``created_by`` and ``updated_by``: the principal id from :mod:`mainspring.context` at insert/update.

    ``None`` when no principal is bound (a migration, a background job without one). A value set
    explicitly on the instance wins.
    """

    created_by: Mapped[str | None] = mapped_column(
        String(ACTOR_LENGTH), nullable=True, default=current_actor, sort_order=92
    )
    updated_by: Mapped[str | None] = mapped_column(
        String(ACTOR_LENGTH), nullable=True, default=current_actor, onupdate=current_actor, sort_order=93
    )


class SoftDelete:
    """``deleted_at``: a deleted row keeps its data and is left out of every ORM query by default.

    To see deleted rows pass ``include_deleted=True`` to the repository, or the execution option
    ``select(Model).execution_options(include_deleted=True)``. :meth:`restore` brings a row back;
    ``Repository.delete(id, hard=True)`` removes it for good.
    """

    deleted_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, nullable=True, default=None, sort_order=94
    )

    @property
    def is_deleted(self) -> bool:
        """Whether the row is soft-deleted."""
        return self.deleted_at is not None

    def mark_deleted(self, at: dt.datetime | None = None) -> None:
        """Soft-delete this row (at ``at``, default now); written at the next flush."""
        self.deleted_at = at if at is not None else utcnow()

    def restore(self) -> None:
        """Undo a soft delete; written at the next flush."""
        self.deleted_at = None


class Versioned:
    """``version``: optimistic locking; an update of a row changed by someone else raises ``ConflictError``.

    Every UPDATE and DELETE checks the version it read and bumps it (SQLAlchemy ``version_id_col``), so
    of two writers that read the same version exactly one wins. A model that sets ``__mapper_args__``
    itself must keep ``"version_id_col": cls.version`` in it.
    """

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, sort_order=95)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        """Make ``version`` the mapper's version counter."""
        return {"version_id_col": cls.version}


# -- soft delete: one criteria option, built once, added to every top-level ORM statement -----------------

_NOT_DELETED: Final = with_loader_criteria(
    SoftDelete,
    lambda cls: cls.deleted_at.is_(None),
    include_aliases=True,
)


@event.listens_for(Session, "do_orm_execute")
def _exclude_soft_deleted(state: ORMExecuteState) -> None:
    # Relationship and column loads inherit the criteria from the statement that started them, so
    # adding it again there would only cost time (the documented with_loader_criteria recipe).
    if state.is_column_load or state.is_relationship_load:
        return
    if state.execution_options.get(INCLUDE_DELETED, False):
        return
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(_NOT_DELETED)


# -- naive datetimes are refused when assigned, where the traceback points at the culprit ---------------


def _check_aware(target: object, value: Any, _old: Any, initiator: Any) -> Any:
    if isinstance(value, dt.datetime):
        require_aware(value, initiator.key)
    return value


@event.listens_for(Mapper, "mapper_configured")
def _watch_utc_columns(mapper: Mapper[Any], class_: type) -> None:
    for prop in mapper.column_attrs:
        if any(isinstance(column.type, UTCDateTime) for column in prop.columns):
            attribute: QueryableAttribute[Any] = getattr(class_, prop.key)
            if not event.contains(attribute, "set", _check_aware):
                event.listen(attribute, "set", _check_aware, retval=True)
