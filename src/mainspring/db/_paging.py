"""Sorting, filtering and keyset pagination for :class:`~mainspring.db.Repository`.

A keyset page continues after the sort key of the last row it returned, so page 1,000 costs what page 1
costs and rows inserted meanwhile neither repeat nor vanish (as they do with ``OFFSET``). The cursor a
client gets back is opaque: URL-safe base64 of a small JSON document holding the sort key values and the
sort order they belong to. Decoding checks all of it (size, encoding, shape, the sort order, each value's
type against its column), so a tampered or stale cursor is a :class:`~mainspring.errors.BadRequestError`,
never a server error. The values only ever reach SQL as bound parameters.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar

import orjson
from sqlalchemy import ColumnElement, and_, false, literal, or_, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Mapper
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from mainspring.db._types import UTCDateTime
from mainspring.errors import BadRequestError, ValidationError

__all__ = [
    "MAX_CURSOR_LENGTH",
    "OrderBy",
    "Page",
    "SortKey",
    "build_filters",
    "decode_cursor",
    "encode_cursor",
    "keyset_predicate",
    "parse_order_by",
]

ItemT = TypeVar("ItemT")

#: Longest cursor accepted, in characters; longer input is refused before any decoding work.
MAX_CURSOR_LENGTH: Final = 2048

#: A sort order: an attribute name (``"name"``, ``"-created_at"`` for descending), a mapped attribute
#: (``Order.name``), ``Order.name.desc()``, or a sequence of these.
_OrderItem: TypeAlias = str | InstrumentedAttribute[Any] | UnaryExpression[Any]
OrderBy: TypeAlias = _OrderItem | Sequence[_OrderItem]


@dataclass(frozen=True, slots=True)
class Page(Generic[ItemT]):
    """One page of a keyset-paginated listing: ``items`` and the cursor of the next page.

    ``next_cursor`` is ``None`` on the last page; otherwise pass it as ``after=`` to get the next one.
    """

    items: list[ItemT]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        """Whether another page follows."""
        return self.next_cursor is not None


@dataclass(frozen=True, slots=True)
class SortKey:
    """One column of a sort order: the attribute key, its column, and the direction."""

    key: str
    attribute: InstrumentedAttribute[Any]
    descending: bool
    nullable: bool
    python_type: type | None
    aware: bool  # a UTCDateTime column: naive values are refused

    @property
    def token(self) -> str:
        """The key as written in a sort spec: ``name`` or ``-name``."""
        return f"-{self.key}" if self.descending else self.key

    def clause(self) -> ColumnElement[Any]:
        """The ORDER BY clause for this key."""
        return self.attribute.desc() if self.descending else self.attribute.asc()


def _python_type(attribute: InstrumentedAttribute[Any]) -> type | None:
    try:
        return attribute.type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def _sortable(mapper: Mapper[Any]) -> dict[str, InstrumentedAttribute[Any]]:
    return {prop.key: getattr(mapper.class_, prop.key) for prop in mapper.column_attrs}


def parse_order_by(mapper: Mapper[Any], order_by: OrderBy | None, *, pk_key: str) -> list[SortKey]:
    """Turn ``order_by`` into sort keys, with the primary key appended as the tie-breaker.

    Unknown names raise :class:`ValidationError` listing the sortable fields, because a sort order
    often comes straight from a query parameter.
    """
    columns = _sortable(mapper)
    specs: Sequence[Any]
    if order_by is None:
        specs = ()
    elif isinstance(order_by, str | InstrumentedAttribute | UnaryExpression):
        specs = (order_by,)
    else:
        specs = order_by
    keys: list[SortKey] = []
    seen: set[str] = set()
    for spec in specs:
        key, descending = _parse_one(spec, columns)
        if key in seen:
            continue
        seen.add(key)
        keys.append(_sort_key(columns, key, descending))
    if pk_key not in seen:
        keys.append(_sort_key(columns, pk_key, False))
    return keys


def _sort_key(columns: Mapping[str, InstrumentedAttribute[Any]], key: str, descending: bool) -> SortKey:
    attribute = columns[key]
    column = attribute.property.columns[0]
    return SortKey(
        key,
        attribute,
        descending,
        nullable=bool(getattr(column, "nullable", True)),
        python_type=_python_type(attribute),
        aware=isinstance(attribute.type, UTCDateTime),
    )


def _parse_one(spec: Any, columns: Mapping[str, InstrumentedAttribute[Any]]) -> tuple[str, bool]:
    descending = False
    if isinstance(spec, str):
        name = spec.strip()
        if name[:1] in ("-", "+"):
            descending, name = name[0] == "-", name[1:]
        if name in columns:
            return name, descending
        raise ValidationError(
            f"cannot sort by {spec!r}: not a field; sortable fields are {', '.join(sorted(columns))}",
            errors=[{"loc": ["order_by"], "msg": f"unknown field {name!r}", "type": "unknown_field"}],
        )
    if isinstance(spec, UnaryExpression) and spec.modifier in (operators.desc_op, operators.asc_op):
        descending = spec.modifier is operators.desc_op
        spec = spec.element
    for key, attribute in columns.items():
        if spec is attribute or (hasattr(spec, "compare") and attribute.expression.compare(spec)):
            return key, descending
    raise ValidationError(
        f"cannot sort by {spec!r}: give a field name or an attribute of this model",
        errors=[{"loc": ["order_by"], "msg": "not a column of this model", "type": "unknown_field"}],
    )


def build_filters(mapper: Mapper[Any], filters: Mapping[str, Any] | None) -> list[ColumnElement[bool]]:
    """Turn ``{field: value}`` into WHERE clauses: ``=``, ``IS NULL`` for ``None``, ``IN`` for collections."""
    if not filters:
        return []
    columns = _sortable(mapper)
    clauses: list[ColumnElement[bool]] = []
    for name, value in filters.items():
        attribute = columns.get(name)
        if attribute is None:
            raise ValidationError(
                f"cannot filter by {name!r}: not a field; fields are {', '.join(sorted(columns))}",
                errors=[{"loc": ["filters", name], "msg": "unknown field", "type": "unknown_field"}],
            )
        if value is None:
            clauses.append(attribute.is_(None))
        elif isinstance(value, list | tuple | set | frozenset):
            clauses.append(attribute.in_(list(value)) if value else false())
        else:
            clauses.append(attribute == value)
    return clauses


def keyset_predicate(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """The WHERE clause selecting rows strictly after ``values`` in the order ``keys``.

    One direction throughout becomes a row-value comparison (``(a, b) > (:a, :b)``), which every
    supported backend can answer from an index; mixed directions expand to ``a > :a OR (a = :a AND b <
    :b) ...``.
    """
    if len({k.descending for k in keys}) == 1:
        if len(keys) == 1:
            key = keys[0]
            single: ColumnElement[bool] = (
                key.attribute < values[0] if key.descending else key.attribute > values[0]
            )
            return single
        left = tuple_(*(k.attribute for k in keys))
        right = tuple_(*(_bound(k, v) for k, v in zip(keys, values, strict=True)))
        return left < right if keys[0].descending else left > right
    alternatives: list[ColumnElement[bool]] = []
    for i, key in enumerate(keys):
        equal = [keys[j].attribute == values[j] for j in range(i)]
        beyond = key.attribute < values[i] if key.descending else key.attribute > values[i]
        alternatives.append(and_(*equal, beyond))
    return or_(*alternatives)


def _bound(key: SortKey, value: Any) -> Any:
    return literal(value, key.attribute.type)


# --- the cursor ------------------------------------------------------------------------------------------


def _spec_of(keys: Sequence[SortKey]) -> str:
    return ",".join(k.token for k in keys)


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    raise TypeError(f"cannot put a {type(value).__name__} into a page cursor")


def encode_cursor(keys: Sequence[SortKey], row: object) -> str:
    """Return the opaque cursor pointing just after ``row`` in the order ``keys``."""
    document = {"o": _spec_of(keys), "k": [_encode_value(getattr(row, k.key)) for k in keys]}
    return base64.urlsafe_b64encode(orjson.dumps(document)).rstrip(b"=").decode("ascii")


def _bad_cursor(reason: str) -> BadRequestError:
    return BadRequestError(
        f"invalid page cursor: {reason}; pass back the next_cursor of a previous page unchanged, "
        "or leave it out to start from the first page",
        code="invalid_cursor",
    )


def decode_cursor(keys: Sequence[SortKey], cursor: str) -> list[Any]:
    """Return the sort key values in ``cursor``, checked against ``keys``; :class:`BadRequestError` if bad."""
    if not isinstance(cursor, str) or not cursor:
        raise _bad_cursor("empty or not a string")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise _bad_cursor(f"longer than {MAX_CURSOR_LENGTH} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise _bad_cursor("not a cursor this service made") from None
    if not isinstance(document, dict) or set(document) != {"o", "k"}:
        raise _bad_cursor("not a cursor this service made")
    if document["o"] != _spec_of(keys):
        raise _bad_cursor("it belongs to a different sort order")
    values = document["k"]
    if not isinstance(values, list) or len(values) != len(keys):
        raise _bad_cursor("wrong number of sort values")
    return [_decode_value(key, value) for key, value in zip(keys, values, strict=True)]


def _decode_value(key: SortKey, value: Any) -> Any:
    if value is None:
        if key.nullable:
            return None
        raise _bad_cursor(f"{key.key} cannot be null")
    kind = key.python_type
    decoder = _DECODERS.get(kind) if kind is not None else _decode_plain
    if decoder is None and kind is not None and issubclass(kind, enum.Enum):
        decoder = _decode_enum
    decoded = decoder(value, kind) if decoder is not None else _INVALID
    if decoded is _INVALID or (key.aware and getattr(decoded, "tzinfo", True) is None):
        raise _bad_cursor(f"bad value for {key.key}")
    return decoded


_INVALID: Final = object()


def _decode_plain(value: Any, _kind: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else _INVALID


def _decode_bool(value: Any, _kind: Any) -> Any:
    return value if isinstance(value, bool) else _INVALID


def _decode_int(value: Any, _kind: Any) -> Any:
    # Bounded to 64 bits, the widest integer column: a larger value could only fail in the driver.
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return _INVALID


def _decode_float(value: Any, _kind: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _INVALID


def _decode_str(value: Any, _kind: Any) -> Any:
    return value if isinstance(value, str) else _INVALID


def _from_text(parse: Any) -> Any:
    def decode(value: Any, _kind: Any) -> Any:
        if not isinstance(value, str) or len(value) > 64:
            return _INVALID
        try:
            return parse(value)
        except (ValueError, decimal.InvalidOperation):
            return _INVALID

    return decode


def _decode_enum(value: Any, kind: Any) -> Any:
    if isinstance(value, str) and value in kind.__members__:
        return kind[value]
    return _INVALID


_DECODERS: Final[dict[type, Any]] = {
    bool: _decode_bool,
    int: _decode_int,
    float: _decode_float,
    str: _decode_str,
    dt.datetime: _from_text(dt.datetime.fromisoformat),
    dt.date: _from_text(dt.date.fromisoformat),
    dt.time: _from_text(dt.time.fromisoformat),
    uuid.UUID: _from_text(uuid.UUID),
    decimal.Decimal: _from_text(decimal.Decimal),
}
