"""SQL databases: async engines, units of work, error translation, models, repositories, migrations.

Start a :class:`Database` from a URL (``sqlite+aiosqlite:///app.db``, ``postgresql+asyncpg://...``,
``mysql+asyncmy://...``) or from settings, and do work in units of work::

    from mainspring.db import Database

    async with Database("sqlite+aiosqlite:///app.db") as db:
        async with db.transaction() as unit:
            unit.session.add(order)
            unit.on_commit(wake_outbox)

Driver errors leave as :mod:`mainspring.errors` (a unique violation is a ``ConflictError``, a lost
connection a ``ServiceUnavailableError``). See ``docs/db.md``, ``docs/db-models.md`` and
``docs/migrations.md``.
"""

from typing import TYPE_CHECKING

from mainspring._compat import lazy_exports
from mainspring.config._sections import DatabaseSettings, DatabaseTLS
from mainspring.db._base import NAMING_CONVENTION, Base, secret_column
from mainspring.db._changelog import ChangeAction, ChangeLog
from mainspring.db._database import Database
from mainspring.db._errors import TransactionConflictError, translate_db_error
from mainspring.db._mixins import (
    INCLUDE_DELETED,
    AuditColumns,
    IntPrimaryKey,
    SoftDelete,
    Timestamps,
    UUIDPrimaryKey,
    Versioned,
)
from mainspring.db._paging import Page
from mainspring.db._pool import PoolStats
from mainspring.db._registry import DatabaseRegistry
from mainspring.db._repository import Repository
from mainspring.db._transaction import IsolationLevel, UnitOfWork, retry_on_conflict
from mainspring.db._types import UTCDateTime, uuid7, uuid7_time

if TYPE_CHECKING:
    from mainspring.db._migrate import MigrationStep, Migrator, RevisionInfo

# Migrations pull in Alembic: imported on first use, so a running service that does not migrate at
# start never loads it.
__getattr__ = lazy_exports(__name__, "mainspring.db._migrate", ("MigrationStep", "Migrator", "RevisionInfo"))

__all__ = [
    "INCLUDE_DELETED",
    "NAMING_CONVENTION",
    "AuditColumns",
    "Base",
    "ChangeAction",
    "ChangeLog",
    "Database",
    "DatabaseRegistry",
    "DatabaseSettings",
    "DatabaseTLS",
    "IntPrimaryKey",
    "IsolationLevel",
    "MigrationStep",
    "Migrator",
    "Page",
    "PoolStats",
    "Repository",
    "RevisionInfo",
    "SoftDelete",
    "Timestamps",
    "TransactionConflictError",
    "UTCDateTime",
    "UUIDPrimaryKey",
    "UnitOfWork",
    "Versioned",
    "retry_on_conflict",
    "secret_column",
    "translate_db_error",
    "uuid7",
    "uuid7_time",
]
