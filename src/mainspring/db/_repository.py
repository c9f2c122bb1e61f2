"""``Repository[Model]``: the common queries and writes of one model, in the ambient unit of work.

Every method runs in ``async with database.session() as session``: inside ``database.transaction()`` it
joins that unit of work (same session, same transaction, nothing committed until the unit commits);
outside one it runs in a short transaction of its own. Writes flush before they return, so generated
keys are set and constraint violations surface at the call, already translated into
:mod:`mainspring.errors` by the database boundary.

Services subclass it for their own queries::

    class OrderRepository(Repository[Order]):
        async def open_for(self, customer_id: UUID) -> list[Order]:
            return await self.list(Order.customer_id == customer_id, filters={"status": "open"})
"""

from __future__ import annotations

import builtins
import typing
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeVar, overload

from sqlalchemy import ColumnElement, Select, Table, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapper

from mainspring.db._bulk import bulk_insert
from mainspring.db._changelog import is_audited
from mainspring.db._database import Database
from mainspring.db._mixins import INCLUDE_DELETED, SoftDelete
from mainspring.db._paging import (
    OrderBy,
    Page,
    SortKey,
    build_filters,
    decode_cursor,
    encode_cursor,
    keyset_predicate,
    parse_order_by,
)
from mainspring.db._upsert import check_rows, upsert_rows
from mainspring.errors import ConflictError, NotFoundError, ValidationError

__all__ = ["Repository"]

ModelT = TypeVar("ModelT", bound=DeclarativeBase)

_SHOW_DELETED: Final[Mapping[str, Any]] = {INCLUDE_DELETED: True}
_DEFAULT: Final[Mapping[str, Any]] = {}
# Ids per IN (...) list: far below every backend's bound-parameter limit.
_IN_CHUNK: Final = 500


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the repository needs to know about a model, worked out once per model."""

    mapper: Mapper[Any]
    table: Table
    name: str
    pk: InstrumentedAttribute[Any]
    pk_key: str
    pk_type: type | None
    columns: dict[str, InstrumentedAttribute[Any]]
    updatable: frozenset[str]
    soft_delete: bool
    version_key: str | None
    audited: bool
    default_order: tuple[SortKey, ...]


_INFOS: dict[type[Any], ModelInfo] = {}


def _model_info(model: type[Any]) -> ModelInfo:
    info = _INFOS.get(model)
    if info is not None:
        return info
    mapper: Mapper[Any] = inspect(model)
    if len(mapper.primary_key) != 1:
        raise TypeError(
            f"Repository needs a single-column primary key; {model.__name__} has "
            f"{len(mapper.primary_key)}: query it with the session directly"
        )
    pk_key = mapper.get_property_by_column(mapper.primary_key[0]).key
    columns = {prop.key: getattr(model, prop.key) for prop in mapper.column_attrs}
    version_key = None
    if mapper.version_id_col is not None:
        version_key = mapper.get_property_by_column(mapper.version_id_col).key
    try:
        pk_type: type | None = mapper.primary_key[0].type.python_type
    except NotImplementedError:
        pk_type = None
    if not isinstance(mapper.local_table, Table):
        raise TypeError(f"Repository needs a model mapped to a table; {model.__name__} is mapped to a select")
    info = ModelInfo(
        mapper=mapper,
        table=mapper.local_table,
        name=model.__name__,
        pk=columns[pk_key],
        pk_key=pk_key,
        pk_type=pk_type,
        columns=columns,
        updatable=frozenset(columns) - {pk_key},
        soft_delete=issubclass(model, SoftDelete),
        version_key=version_key,
        audited=is_audited(model),
        default_order=tuple(parse_order_by(mapper, None, pk_key=pk_key)),
    )
    _INFOS[model] = info
    return info


class Repository(Generic[ModelT]):
    """Queries and writes for one model: ``Repository[Order]``, subclassed or built with ``model=``.

    ``class OrderRepository(Repository[Order])`` finds its model in the type argument (or set
    ``model = Order`` in the class body); ``Repository(db, Order)`` works without a subclass. Models
    need a single-column primary key. Soft-deleted rows are left out unless ``include_deleted=True``.
    """

    #: The mapped class this repository serves.
    model: type[ModelT]
    #: Largest ``limit`` that :meth:`page` accepts (sort orders and limits often come from clients).
    max_page_size: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" in cls.__dict__:
            return
        # Repository[Order], or a generic intermediate base of one (AuditedRepository[Order]).
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = typing.get_origin(base)
            arguments = typing.get_args(base)
            generic = isinstance(origin, type) and issubclass(origin, Repository)
            if generic and len(arguments) == 1 and isinstance(arguments[0], type):
                cls.model = arguments[0]

    def __init__(self, database: Database, model: type[ModelT] | None = None) -> None:
        """Serve ``model`` (default: the class's ``model``) on ``database``; no I/O happens here."""
        if model is not None:
            self.model = model
        elif not isinstance(getattr(self, "model", None), type):
            raise TypeError(
                f"{type(self).__name__} has no model: subclass Repository[Model], set `model = Model` "
                "in the class body, or pass model=Model"
            )
        self.database = database
        self._info = _model_info(self.model)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._info.name} on database {self.database.name!r}>"

    # --- helpers for subclasses ------------------------------------------------------------------------

    def select(self, *where: ColumnElement[bool], include_deleted: bool = False) -> Select[ModelT]:
        """Return ``select(model).where(*where)``, soft-deleted rows shown if asked: a start for queries."""
        statement = select(self.model).where(*where)
        if include_deleted:
            statement = statement.execution_options(include_deleted=True)
        return statement

    async def scalars(self, statement: Select[ModelT]) -> builtins.list[ModelT]:
        """Run ``statement`` in the ambient unit of work and return the model instances it selects."""
        async with self.database.session() as session:
            return builtins.list((await session.scalars(statement)).all())

    def _coerce_id(self, value: Any) -> Any:
        kind = self._info.pk_type
        if kind is None or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and len(value) <= 64:
            try:
                if kind is uuid.UUID:
                    return uuid.UUID(value)
                if kind is int:
                    return int(value)
            except ValueError:
                pass  # reported below, with the expected type
        raise ValidationError(
            f"{repr(value)[:70]} is not a valid {self._info.name} id (expected {kind.__name__})",
            errors=[{"loc": [self._info.pk_key], "msg": f"expected {kind.__name__}", "type": "invalid_id"}],
        )

    def _not_found(self, id: Any) -> NotFoundError:
        return NotFoundError(
            f"{self._info.name} {id} does not exist",
            details={"entity": self._info.name, "id": str(id)},
        )

    async def _load(self, session: Any, id: Any, include_deleted: bool) -> ModelT | None:
        obj: ModelT | None = await session.get(
            self.model, id, execution_options=_SHOW_DELETED if include_deleted else _DEFAULT
        )
        # The identity map answers without a query (and without the soft-delete criteria) for a row
        # this unit of work already holds, so check the flag here too.
        if self._info.soft_delete and not include_deleted and getattr(obj, "deleted_at", None) is not None:
            return None
        return obj

    # --- reads -----------------------------------------------------------------------------------------

    async def get(self, id: Any, /, *, include_deleted: bool = False) -> ModelT:
        """Return the row with primary key ``id``; :class:`NotFoundError` if there is none."""
        obj = await self.get_or_none(id, include_deleted=include_deleted)
        if obj is None:
            raise self._not_found(id)
        return obj

    async def get_or_none(self, id: Any, /, *, include_deleted: bool = False) -> ModelT | None:
        """Return the row with primary key ``id``, or ``None``."""
        key = self._coerce_id(id)
        async with self.database.session() as session:
            return await self._load(session, key, include_deleted)

    async def get_many(
        self, ids: Iterable[Any], /, *, include_deleted: bool = False
    ) -> builtins.list[ModelT]:
        """Return the rows with these primary keys, in the order of ``ids``; missing ones are left out."""
        keys = builtins.list(dict.fromkeys(self._coerce_id(i) for i in ids))
        if not keys:
            return []
        found: dict[Any, ModelT] = {}
        pk = self._info.pk
        async with self.database.session() as session:
            for start in range(0, len(keys), _IN_CHUNK):
                statement = self.select(
                    pk.in_(keys[start : start + _IN_CHUNK]), include_deleted=include_deleted
                )
                for obj in (await session.scalars(statement)).all():
                    found[getattr(obj, self._info.pk_key)] = obj
        return [found[k] for k in keys if k in found]

    def _filtered(
        self,
        statement: Select[Any],
        where: Sequence[ColumnElement[bool]],
        filters: Mapping[str, Any] | None,
        include_deleted: bool,
    ) -> Select[Any]:
        clauses = [*where, *build_filters(self._info.mapper, filters)] if filters else where
        if clauses:
            statement = statement.where(*clauses)
        if include_deleted:
            statement = statement.execution_options(include_deleted=True)
        return statement

    def _order(self, order_by: OrderBy | None) -> Sequence[SortKey]:
        if order_by is None:
            return self._info.default_order
        return parse_order_by(self._info.mapper, order_by, pk_key=self._info.pk_key)

    async def list(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, Any] | None = None,
        order_by: OrderBy | None = None,
        limit: int | None = None,
        offset: int = 0,
        include_deleted: bool = False,
    ) -> builtins.list[ModelT]:
        """Return the rows matching ``where`` clauses and ``filters``, sorted (by primary key by default).

        ``filters`` maps field names to values: equality, ``None`` for ``IS NULL``, a list/tuple/set for
        ``IN``. ``order_by`` takes names (``"-created_at"`` for descending) or attributes; the primary
        key always breaks ties. For large listings prefer :meth:`page`.
        """
        if (limit is not None and limit < 0) or offset < 0:
            raise ValidationError(
                f"limit and offset must be >= 0, got limit={limit} offset={offset}",
                errors=[{"loc": ["limit"], "msg": "must be >= 0", "type": "range"}],
            )
        keys = self._order(order_by)
        statement = self._filtered(select(self.model), where, filters, include_deleted)
        statement = statement.order_by(*(k.clause() for k in keys))
        if limit is not None:
            statement = statement.limit(limit)
        if offset:
            statement = statement.offset(offset)
        async with self.database.session() as session:
            return builtins.list((await session.scalars(statement)).all())

    async def page(
        self,
        *where: ColumnElement[bool],
        after: str | None = None,
        limit: int = 50,
        order_by: OrderBy | None = None,
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
    ) -> Page[ModelT]:
        """Return up to ``limit`` rows after the cursor ``after``, and the cursor of the next page.

        Keyset pagination: the sort order (primary key by default, always appended as tie-breaker) must
        use non-null columns. A malformed cursor, or one from another sort order, raises
        :class:`~mainspring.errors.BadRequestError`; a bad ``limit`` or field a :class:`ValidationError`.
        """
        if not 1 <= limit <= self.max_page_size:
            raise ValidationError(
                f"limit must be between 1 and {self.max_page_size}, got {limit}",
                errors=[{"loc": ["limit"], "msg": f"must be 1..{self.max_page_size}", "type": "range"}],
            )
        keys = self._order(order_by)
        nullable = [k.key for k in keys if k.nullable]
        if nullable:
            raise ValidationError(
                f"cannot page by {', '.join(nullable)}: keyset pages need non-null sort fields",
                errors=[{"loc": ["order_by"], "msg": "nullable field", "type": "nullable_sort"}],
            )
        clauses = builtins.list(where)
        if after is not None:
            clauses.append(keyset_predicate(keys, decode_cursor(keys, after)))
        statement = self._filtered(select(self.model), clauses, filters, include_deleted)
        statement = statement.order_by(*(k.clause() for k in keys)).limit(limit + 1)
        async with self.database.session() as session:
            rows = builtins.list((await session.scalars(statement)).all())
        if len(rows) <= limit:
            return Page(rows, None)
        items = rows[:limit]
        return Page(items, encode_cursor(keys, items[-1]))

    async def count(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
    ) -> int:
        """Return how many rows match ``where`` and ``filters``."""
        statement = self._filtered(select(func.count(self._info.pk)), where, filters, include_deleted)
        async with self.database.session() as session:
            return int((await session.execute(statement)).scalar_one())

    async def exists(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
    ) -> bool:
        """Say whether any row matches ``where`` and ``filters`` (``exists(filters={"id": x})``)."""
        statement = self._filtered(select(self._info.pk), where, filters, include_deleted).limit(1)
        async with self.database.session() as session:
            return (await session.execute(statement)).first() is not None

    # --- writes ----------------------------------------------------------------------------------------

    async def add(self, instance: ModelT) -> ModelT:
        """Insert ``instance`` and flush; its generated key and defaults are set when this returns."""
        async with self.database.session() as session:
            session.add(instance)
            await session.flush()
        return instance

    async def add_many(self, instances: Iterable[ModelT]) -> builtins.list[ModelT]:
        """Insert all ``instances`` in bulk (one round trip per ~1,000 rows where the dialect allows).

        The instances come back persistent with their keys and defaults set, as with :meth:`add`.
        """
        objs = builtins.list(instances)
        if not objs:
            return objs
        # Outside a unit of work the session closes right after, which detaches everything anyway, so
        # the instances need not be attached to it first.
        attach = self.database.current() is not None
        async with self.database.session() as session:
            done = await session.run_sync(bulk_insert, self._info.mapper, objs, attach)
            if not done:
                session.add_all(objs)
                await session.flush()
        return objs

    async def update(self, id: Any, /, **changes: Any) -> ModelT:
        """Set ``changes`` on the row ``id`` and flush; return the updated instance.

        For a :class:`~mainspring.db.Versioned` model, passing ``version=N`` makes it an optimistic
        update: :class:`ConflictError` unless the row is still at version ``N``. A row changed by
        someone else between this read and write also raises :class:`ConflictError`.
        """
        info = self._info
        unknown = changes.keys() - info.updatable
        if unknown:
            raise ValidationError(
                f"cannot update {', '.join(sorted(unknown))} of {info.name}: not updatable fields "
                f"(fields: {', '.join(sorted(info.updatable))})",
                errors=[
                    {"loc": [k], "msg": "unknown or read-only field", "type": "unknown_field"}
                    for k in sorted(unknown)
                ],
            )
        expected = changes.pop(info.version_key) if info.version_key in changes else None
        key = self._coerce_id(id)
        async with self.database.session() as session:
            obj = await self._load(session, key, False)
            if obj is None:
                raise self._not_found(id)
            if expected is not None and getattr(obj, info.version_key) != expected:  # type: ignore[arg-type]
                raise ConflictError(
                    f"{info.name} {id} is at version {getattr(obj, info.version_key)}, not {expected}: "  # type: ignore[arg-type]
                    "someone else changed it; reload it and apply the change again",
                    code="stale_version",
                    details={"entity": info.name, "id": str(id), "expected_version": expected},
                )
            for name, value in changes.items():
                setattr(obj, name, value)
            await session.flush()
        return obj

    async def delete(self, id: Any, /, *, hard: bool = False) -> None:
        """Delete the row ``id``: a soft delete for :class:`~mainspring.db.SoftDelete` models unless ``hard``.

        :class:`NotFoundError` if there is no such row (an already soft-deleted row counts as missing
        unless ``hard=True``, which purges it).
        """
        soft = self._info.soft_delete and not hard
        key = self._coerce_id(id)
        async with self.database.session() as session:
            obj = await self._load(session, key, include_deleted=not soft)
            if obj is None:
                raise self._not_found(id)
            if soft:
                obj.mark_deleted()  # type: ignore[attr-defined]
            else:
                await session.delete(obj)
            await session.flush()

    async def restore(self, id: Any, /) -> ModelT:
        """Undo the soft delete of row ``id`` and return it (unchanged if it was not deleted)."""
        if not self._info.soft_delete:
            raise TypeError(f"{self._info.name} has no SoftDelete mixin; there is nothing to restore")
        key = self._coerce_id(id)
        async with self.database.session() as session:
            obj = await self._load(session, key, include_deleted=True)
            if obj is None:
                raise self._not_found(id)
            if obj.deleted_at is not None:  # type: ignore[attr-defined]
                obj.restore()  # type: ignore[attr-defined]
                await session.flush()
        return obj

    @overload
    async def upsert(
        self, values: Mapping[str, Any], *, conflict: Sequence[str], update: Sequence[str] | None = None
    ) -> ModelT: ...

    @overload
    async def upsert(
        self,
        values: Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> builtins.list[ModelT]: ...

    async def upsert(
        self,
        values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> ModelT | builtins.list[ModelT]:
        """Insert ``values``, or update the row with the same ``conflict`` columns; return the row(s).

        Uses the dialect's native upsert: ``ON CONFLICT (conflict) DO UPDATE`` on PostgreSQL and SQLite,
        ``ON DUPLICATE KEY UPDATE`` on MySQL/MariaDB (which matches on any unique key, so ``conflict``
        should be the table's only one there). ``conflict`` must be the primary key or a unique
        constraint. ``update`` names the columns to overwrite on conflict (default: every given column
        outside ``conflict``); ``updated_at``/``updated_by`` and the version are maintained as in an
        update. Give a list of mappings to upsert many rows in one statement.
        """
        single = isinstance(values, Mapping)
        rows = [dict(values)] if isinstance(values, Mapping) else [dict(v) for v in values]
        if not rows:
            return []
        info = self._info
        check_rows(info, rows, conflict)
        if info.pk_key in conflict:
            for row in rows:
                row[info.pk_key] = self._coerce_id(row[info.pk_key])
        if update is None:
            given = set().union(*rows)
            update = [n for n in info.columns if n in given and n in info.updatable and n not in conflict]
        elif unknown := set(update) - info.updatable:
            raise ValidationError(
                f"cannot update {', '.join(sorted(unknown))} on conflict: not fields of {info.name}",
                errors=[{"loc": ["update"], "msg": "unknown field", "type": "unknown_field"}],
            )
        async with self.database.session() as session:
            result = await upsert_rows(session, info, rows, conflict, update)
        return result[0] if single else result
