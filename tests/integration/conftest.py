"""Fixtures shared by the suites that need SQL (db, events, security stores).

One URL per backend (SQLite, PostgreSQL, MariaDB) and a started Database.

``db_url`` is parametrized over the three backends; every test that uses it (directly or through
``database``) runs once per backend. PostgreSQL and MariaDB come from the mainspring plugin's fixtures,
which give each test a fresh database (and skip, or fail with ``MAINSPRING_REQUIRE_SERVICES=1``, when the
server is down). SQLite is a file in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mainspring.db import Database

BACKENDS = ["sqlite", "postgres", "mariadb"]


def sqlite_url(tmp_path: Path) -> str:
    """Return a ``sqlite+aiosqlite`` URL to a database file in ``tmp_path``."""
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy async URL to an empty database, once per backend (ids: sqlite, postgres, mariadb)."""
    backend: str = request.param
    if backend == "sqlite":
        return sqlite_url(tmp_path)
    service = "postgres_url" if backend == "postgres" else "mariadb_url"
    return str(request.getfixturevalue(service).sqlalchemy_url)


@pytest.fixture
def db_backend(db_url: str) -> str:
    """The backend ``db_url`` points at: ``sqlite``, ``postgres`` or ``mariadb``."""
    if db_url.startswith("sqlite"):
        return "sqlite"
    if db_url.startswith("postgresql"):
        return "postgres"
    return "mariadb"


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """A started :class:`~mainspring.db.Database` on ``db_url``, stopped after the test.

    Timeouts are short so a fault test fails fast instead of hanging the suite.
    """
    db = Database(
        db_url, pool_size=5, max_overflow=5, pool_timeout=5.0, connect_timeout=5.0, start_timeout=10.0
    )
    await db.start()
    try:
        yield db
    finally:
        await db.stop()
