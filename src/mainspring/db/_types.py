"""Column types and id generation: :func:`uuid7` and :class:`UTCDateTime`.

``uuid7()`` makes RFC 9562 version-7 UUIDs: a 48-bit Unix millisecond timestamp first, so ids sort by
creation time and new rows land at the right edge of a B-tree index instead of at random pages.
``UTCDateTime`` stores timezone-aware UTC datetimes the same way on every backend, SQLite and MySQL
included, and refuses naive datetimes instead of guessing their zone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import DateTime, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, Engine, ExceptionContext
from sqlalchemy.types import TypeDecorator

from mainspring._ids import uuid7_int
from mainspring.errors import MainspringError, ValidationError

__all__ = ["UTCDateTime", "require_aware", "utcnow", "uuid7", "uuid7_time"]

_UTC = dt.UTC


def uuid7() -> uuid.UUID:
    """Return a new time-ordered UUID (RFC 9562 version 7).

    Ids from one process are strictly increasing, also within one millisecond and when the wall clock
    steps back; ids from different processes are ordered by their millisecond. Thread-safe.
    """
    return uuid.UUID(int=uuid7_int())


def uuid7_time(value: uuid.UUID) -> dt.datetime:
    """Return the creation time encoded in a version-7 UUID (millisecond precision, UTC).

    Raises :class:`ValueError` when ``value`` is not a version-7 UUID.
    """
    if value.version != 7:
        raise ValueError(f"{value} is a version-{value.version} UUID, not version 7")
    return dt.datetime.fromtimestamp((value.int >> 80) / 1000, tz=_UTC)


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime (the default of the timestamp columns)."""
    return dt.datetime.now(_UTC)


def require_aware(value: dt.datetime, field: str | None = None) -> dt.datetime:
    """Return ``value`` if it is timezone-aware; raise :class:`ValidationError` naming ``field`` if naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        where = f" for {field!r}" if field else ""
        raise ValidationError(
            f"naive datetime {value.isoformat()} given{where}: timestamp columns hold timezone-aware "
            "values; pass an aware datetime such as datetime.now(datetime.UTC) or value.replace(tzinfo=...)",
            errors=[{"loc": [field] if field else [], "msg": "naive datetime", "type": "naive_datetime"}],
        )
    return value


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp column that holds timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite and MySQL/MariaDB have no zone in their column types, so
    values are converted to UTC before they are stored and marked UTC when read back. MySQL/MariaDB get
    ``DATETIME(6)`` so microseconds survive. Any aware datetime is accepted and comes back in UTC; a
    naive datetime raises :class:`~mainspring.errors.ValidationError` instead of being guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        """Use ``DATETIME(6)`` on MySQL/MariaDB (the default precision there drops the microseconds)."""
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Check that ``value`` is aware and convert it to UTC (naive UTC for zone-less backends)."""
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise ValidationError(
                f"expected a datetime for a UTCDateTime column, got {type(value).__name__}",
                errors=[{"loc": [], "msg": "not a datetime", "type": "type"}],
            )
        value = require_aware(value).astimezone(_UTC)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        """Return the stored value as an aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, str):  # SQLite without a registered converter, e.g. in raw queries
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=_UTC)  # type: ignore[no-any-return]
        return value.astimezone(_UTC)  # type: ignore[no-any-return]

    @property
    def python_type(self) -> type[dt.datetime]:
        """The Python type of the values: :class:`datetime.datetime`."""
        return dt.datetime


@event.listens_for(Engine, "handle_error")
def _unwrap_our_errors(context: ExceptionContext) -> None:
    # A MainspringError raised while SQLAlchemy binds parameters (a naive datetime for a UTCDateTime
    # column) would reach the caller wrapped in a StatementError and be reported as an internal error;
    # raising it here makes SQLAlchemy pass it on unwrapped, after its usual clean-up.
    if isinstance(context.original_exception, MainspringError):
        raise context.original_exception
