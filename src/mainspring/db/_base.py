"""The declarative base: :class:`Base`, with a constraint naming convention, and :func:`secret_column`.

Named constraints matter for migrations: Alembic can only drop or alter a constraint it can name, and
without a convention each backend invents its own names (or none, on SQLite). The convention also makes
the name in a unique-violation error tell which columns clashed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, MappedColumn, mapped_column

__all__ = ["NAMING_CONVENTION", "Base", "is_secret_column", "secret_column"]

#: The constraint and index names :class:`Base` gives its tables (SQLAlchemy ``naming_convention``).
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_SECRET_INFO_KEY = "secret"


class Base(DeclarativeBase):
    """Declarative base for mainspring models; its metadata names constraints by :data:`NAMING_CONVENTION`.

    Subclass it with the mixins of :mod:`mainspring.db` (``class Order(UUIDPrimaryKey, Timestamps,
    Base)``). Set ``__audited__ = True`` on a model to record its changes in the ``change_log`` table.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    #: Whether inserts, updates and deletes of this model are written to ``change_log``.
    __audited__: ClassVar[bool] = False


def secret_column(*args: Any, **kwargs: Any) -> MappedColumn[Any]:
    """Return a ``mapped_column(...)`` flagged secret: its values never go into the change log.

    Takes the arguments of :func:`sqlalchemy.orm.mapped_column`; equivalent to passing
    ``info={"secret": True}``. A secret column is left out of the change log entirely.
    """
    info = dict(kwargs.pop("info", None) or {})
    info[_SECRET_INFO_KEY] = True
    return mapped_column(*args, info=info, **kwargs)


def is_secret_column(info: dict[Any, Any]) -> bool:
    """Whether a column's ``info`` marks it secret (see :func:`secret_column`)."""
    return bool(info.get(_SECRET_INFO_KEY, False))
