"""Alembic migrations for mainspring services: the environment helper and the library's own history.

A service's ``migrations/env.py`` (written by ``mainspring db init``) calls :func:`run_migrations`. The
tables the library needs (``change_log``; the outbox and inbox later) ship as the Alembic branch
:data:`LIBRARY_BRANCH` in :data:`LIBRARY_VERSIONS`, which every service's history includes as a second
version location: ``mainspring db upgrade`` (``heads``) applies the library's branch and the service's
own. See ``docs/migrations.md``; the Python API is :class:`mainspring.db.Migrator`.
"""

from mainspring.db.migrations._env import run_migrations
from mainspring.db.migrations._errors import MigrationError
from mainspring.db.migrations._library import LIBRARY_BRANCH, LIBRARY_TABLES, LIBRARY_VERSIONS, SERVICE_BRANCH

__all__ = [
    "LIBRARY_BRANCH",
    "LIBRARY_TABLES",
    "LIBRARY_VERSIONS",
    "SERVICE_BRANCH",
    "MigrationError",
    "run_migrations",
]
