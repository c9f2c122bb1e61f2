"""The change log: one ``change_log`` row per insert, update and delete of an audited model.

A model opts in with ``__audited__ = True``. Changes made through the ORM unit of work (``session.add``,
attribute changes, ``session.delete``, and so every :class:`~mainspring.db.Repository` method) are
recorded by a session ``after_flush`` listener, so the rows are written on the same connection and in
the same transaction as the change itself: they commit and roll back together. Bulk statements that
bypass the unit of work (``Repository.upsert``) call :func:`write_change_log` themselves.

Each row holds the entity (table name), the entity's primary key as text, the action, the changed
fields as ``{field: [old, new]}``, the acting principal and the correlation id from
:mod:`mainspring.context`, and the time. Columns flagged secret (:func:`~mainspring.db.secret_column`)
are left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import JSON, Index, String, Table, Uuid, event, insert, inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Mapper, Session, UOWTransaction, mapped_column
from sqlalchemy.orm.state import InstanceState

from mainspring.context import get_context
from mainspring.db._base import Base, is_secret_column
from mainspring.db._mixins import ACTOR_LENGTH, SoftDelete, current_actor
from mainspring.db._types import UTCDateTime, utcnow, uuid7

__all__ = ["ChangeAction", "ChangeLog", "audited_changes", "is_audited", "write_change_log"]


class ChangeAction(enum.StrEnum):
    """What happened to the row; the ``action`` column of ``change_log``."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SOFT_DELETE = "soft_delete"
    RESTORE = "restore"


class ChangeLog(Base):
    """A row of the ``change_log`` table: one recorded change of an audited entity."""

    __tablename__ = "change_log"
    __table_args__ = (Index("ix_change_log_entity", "entity", "entity_id", "at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    #: The table name of the changed model.
    entity: Mapped[str] = mapped_column(String(128), nullable=False)
    #: The primary key of the changed row, as text (several key columns joined by ``","``).
    entity_id: Mapped[str] = mapped_column(String(255), nullable=False)
    #: One of :class:`ChangeAction`.
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    #: ``{field: [old, new]}`` for every changed, non-secret column (old ``None`` on insert, new on delete).
    changes: Mapped[dict[str, list[Any]]] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql"), nullable=False
    )
    actor: Mapped[str | None] = mapped_column(String(ACTOR_LENGTH), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


_CHANGE_LOG_TABLE: Final[Table] = ChangeLog.__table__  # type: ignore[assignment]


def is_audited(model: type[Any]) -> bool:
    """Whether ``model`` records its changes in ``change_log`` (``__audited__ = True``)."""
    return bool(getattr(model, "__audited__", False))


def _jsonable(value: Any) -> Any:
    # Everything a column can hold, as JSON that every backend's JSON type accepts (no NaN: PostgreSQL
    # rejects it).
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal | dt.timedelta):
        return str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class _AuditInfo:
    """Per mapper: which attributes the change log records, and how to read the primary key."""

    entity: str
    keys: tuple[str, ...]  # column attributes that are not secret
    # Columns the library maintains on every update (``onupdate`` defaults such as ``updated_at`` and
    # ``updated_by``, the version counter): the log row's own ``at`` and ``actor`` already say it, so
    # update entries leave them out and list only what the caller changed.
    maintained: frozenset[str]
    update_keys: tuple[str, ...]
    pk_keys: tuple[str, ...]
    soft_delete: bool


_INFO: dict[Mapper[Any], _AuditInfo] = {}


def _audit_info(mapper: Mapper[Any]) -> _AuditInfo:
    info = _INFO.get(mapper)
    if info is None:
        keys = tuple(
            prop.key
            for prop in mapper.column_attrs
            if not any(is_secret_column(column.info) for column in prop.columns)
        )
        pk_keys = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        maintained = frozenset(
            prop.key
            for prop in mapper.column_attrs
            if any(c.onupdate is not None or c is mapper.version_id_col for c in prop.columns)
        )
        info = _AuditInfo(
            entity=str(getattr(mapper.local_table, "name", mapper.class_.__name__)),
            keys=keys,
            maintained=maintained,
            update_keys=tuple(k for k in keys if k not in maintained),
            pk_keys=pk_keys,
            soft_delete=issubclass(mapper.class_, SoftDelete),
        )
        _INFO[mapper] = info
    return info


def _entity_id(values: Mapping[str, Any], pk_keys: Sequence[str]) -> str:
    return ",".join(str(values.get(key)) for key in pk_keys)


def _diff(
    info: _AuditInfo, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> dict[str, list[Any]]:
    if old is None:
        new = new or {}
        return {k: [None, _jsonable(new[k])] for k in info.keys if new.get(k) is not None}
    if new is None:
        return {k: [_jsonable(old[k]), None] for k in info.keys if old.get(k) is not None}
    return {
        k: [_jsonable(old.get(k)), _jsonable(new[k])]
        for k in info.update_keys
        if k in new and old.get(k) != new[k]
    }


def audited_changes(
    model: type[Any], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[str, dict[str, list[Any]]]:
    """Return ``(entity_id, changes)`` for a row of ``model`` going from ``old`` to ``new`` values.

    ``old`` is ``None`` for an insert, ``new`` is ``None`` for a delete. For an update only the keys
    in ``new`` count, and only those whose value differs; secret columns are always left out.
    """
    info = _audit_info(inspect(model))
    ids = dict(old or {})
    ids.update(new or {})
    return _entity_id(ids, info.pk_keys), _diff(info, old, new)


def _row(entity: str, entity_id: str, action: ChangeAction, changes: dict[str, list[Any]]) -> dict[str, Any]:
    context = get_context()
    return {
        "id": uuid7(),
        "entity": entity,
        "entity_id": entity_id[:255],
        "action": action.value,
        "changes": changes,
        "actor": current_actor(),
        "correlation_id": context.correlation_id[:128] if context.correlation_id else None,
        "at": utcnow(),
    }


def write_change_log(
    session: Session, model: type[Any], entries: Iterable[tuple[ChangeAction, str, dict[str, list[Any]]]]
) -> None:
    """Insert ``change_log`` rows for ``model`` on ``session``'s connection (same transaction).

    ``entries`` are ``(action, entity_id, changes)`` triples, e.g. from :func:`audited_changes`.
    """
    entity = _audit_info(inspect(model)).entity
    rows = [_row(entity, entity_id, action, changes) for action, entity_id, changes in entries]
    if rows:
        session.connection().execute(insert(_CHANGE_LOG_TABLE), rows)


def _update_entry(state: InstanceState[Any], info: _AuditInfo) -> tuple[ChangeAction, dict[str, list[Any]]]:
    changes: dict[str, list[Any]] = {}
    attrs = state.attrs
    for key in info.update_keys:
        history = attrs[key].history
        if not history.added and not history.deleted:
            continue
        before = history.deleted[0] if history.deleted else None
        after = history.added[0] if history.added else None
        if before != after:
            changes[key] = [_jsonable(before), _jsonable(after)]
    action = ChangeAction.UPDATE
    if info.soft_delete and "deleted_at" in changes:
        before, after = changes["deleted_at"]
        if before is None and after is not None:
            action = ChangeAction.SOFT_DELETE
        elif before is not None and after is None:
            action = ChangeAction.RESTORE
    return action, changes


# Whether any audited model is mapped in this process; until one is, flushes skip the listener's scan.
_audited_models: set[type[Any]] = set()


@event.listens_for(Mapper, "mapper_configured")
def _note_audited(_mapper: Mapper[Any], class_: type) -> None:
    if is_audited(class_):
        _audited_models.add(class_)


@event.listens_for(Session, "after_flush")
def _record_flush(session: Session, _flush_context: UOWTransaction) -> None:
    # after_flush still sees the pre-flush new/dirty/deleted sets and attribute histories, and the
    # primary keys the INSERTs produced; the rows go out on the flush's own connection.
    if not _audited_models:
        return
    rows: list[dict[str, Any]] = []
    for obj in session.new:
        if is_audited(type(obj)):
            state = inspect(obj)
            info = _audit_info(state.mapper)
            changes = _diff(info, None, state.dict)
            rows.append(_row(info.entity, _entity_id(state.dict, info.pk_keys), ChangeAction.INSERT, changes))
    for obj in session.dirty:
        if is_audited(type(obj)):
            state = inspect(obj)
            info = _audit_info(state.mapper)
            action, changes = _update_entry(state, info)
            if changes:
                rows.append(_row(info.entity, _entity_id(state.dict, info.pk_keys), action, changes))
    for obj in session.deleted:
        if is_audited(type(obj)):
            state = inspect(obj)
            info = _audit_info(state.mapper)
            changes = _diff(info, state.dict, None)
            rows.append(_row(info.entity, _entity_id(state.dict, info.pk_keys), ChangeAction.DELETE, changes))
    if rows:
        session.connection().execute(insert(_CHANGE_LOG_TABLE), rows)
