"""Database lifecycle, health, pool, settings and faults on real servers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mainspring.config import DatabaseSettings, DatabaseTLS, Settings
from mainspring.db import Database, DatabaseRegistry
from mainspring.errors import ConfigError, ServiceUnavailableError

metadata = MetaData()
counters = Table("life_counters", metadata, Column("id", Integer, primary_key=True, autoincrement=False))


async def test_start_ping_and_stop(database: Database) -> None:
    assert database.started
    assert 0 <= await database.ping(timeout=2) < 2
    await database.stop()
    assert not database.started
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await database.ping()
    await database.start()  # restartable
    assert await database.ping() >= 0


async def test_start_and_stop_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    await db.stop()
    await db.start()
    engine = db.engine
    await db.start()
    assert db.engine is engine
    await db.stop()
    await db.stop()


async def test_engine_before_start_says_to_start_it(db_url: str) -> None:
    db = Database(db_url)
    with pytest.raises(ServiceUnavailableError) as caught:
        _ = db.engine
    assert caught.value.code == "db_not_started"
    assert "await database.start()" in caught.value.message
    with pytest.raises(ServiceUnavailableError):
        async with db.transaction():
            pass


async def test_create_all_and_drop_all(database: Database) -> None:
    await database.create_all(metadata)
    async with database.transaction() as unit:
        await unit.session.execute(insert(counters).values(id=1))
    await database.drop_all(metadata)
    await database.create_all(metadata)
    async with database.session() as session:
        assert (await session.execute(select(counters))).all() == []


async def test_pool_stats_count_checked_out_connections(database: Database) -> None:
    before = database.pool_stats()
    assert before.size == 5
    async with database.transaction() as unit:
        await unit.session.execute(text("SELECT 1"))
        during = database.pool_stats()
    after = database.pool_stats()
    assert during.checked_out == before.checked_out + 1
    assert after.checked_out == before.checked_out
    assert after.open >= 1
    assert after.waits == 0


def test_pool_stats_before_start_are_zero() -> None:
    stats = Database("sqlite+aiosqlite:///unused.db").pool_stats()
    assert (stats.open, stats.checked_out, stats.waits) == (0, 0, 0)


async def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/p.db", busy_timeout=1.5)
    async with db, db.session() as session:
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await session.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == 1500


async def test_in_memory_sqlite_keeps_its_data_across_units(tmp_path: Path) -> None:
    async with Database("sqlite+aiosqlite:///:memory:") as db:
        await db.create_all(metadata)
        async with db.transaction() as unit:
            await unit.session.execute(insert(counters).values(id=1))
        async with db.session() as session:
            assert (await session.execute(select(counters.c.id))).scalars().all() == [1]


# --- database down at start --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/orders",
        "mysql+asyncmy://app:s3cret-pw@127.0.0.1:1/orders",
    ],
    ids=["postgres", "mariadb"],
)
async def test_database_down_at_start_fails_after_start_timeout(url: str) -> None:
    db = Database(url, start_timeout=0.4, connect_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as caught:
        await db.start()
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3
    error = caught.value
    assert "gave up after 0.4 s" in error.message
    assert "127.0.0.1:1" in error.message
    assert error.details["attempts"] >= 2
    assert not db.started
    # The password is nowhere: not in the message, the problem, the repr or the URL.
    for text_ in (error.message, str(error), repr(error), str(error.to_problem()), repr(db), str(db), db.url):
        assert "s3cret-pw" not in text_
    assert "app:***@" in db.url


async def test_sqlite_file_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/x.db", start_timeout=0.2)
    with pytest.raises(ConfigError, match="does not exist") as caught:
        await db.start()
    assert str(tmp_path / "missing-dir") in str(caught.value)
    assert not db.started


async def test_sqlite_file_that_cannot_be_opened_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/a-directory", start_timeout=0.2)
    with pytest.raises(ServiceUnavailableError, match="unable to open database file"):
        await db.start()


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_unknown_database_name_fails_at_once(db_url: str) -> None:
    url = db_url.rsplit("/", 1)[0] + "/no_such_database_here"
    db = Database(url, start_timeout=5)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="no_such_database_here") as caught:
        await db.start()
    assert time.monotonic() - started < 2  # not retried until start_timeout: waiting cannot fix it
    assert caught.value.details["attempts"] == 1


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_tls_settings_reach_the_driver(db_url: str) -> None:
    # The test servers speak no TLS: requiring it must fail, turning it off must work.
    async with Database(db_url, tls=DatabaseTLS(mode="disable")) as plain:
        assert await plain.ping() >= 0
    required = Database(db_url, tls=DatabaseTLS(mode="require"), start_timeout=0.3)
    with pytest.raises(ServiceUnavailableError, match=r"(?i)ssl"):
        await required.start()


# --- connections killed while running ----------------------------------------------------------------


async def kill_other_connections(db_url: str) -> int:
    """Kill every connection to the test database but the killer's own; return how many were killed."""
    killer = create_async_engine(db_url, poolclass=NullPool)
    try:
        async with killer.connect() as connection:
            if db_url.startswith("postgresql"):
                result = await connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                return len(result.all())
            ids = (
                await connection.execute(
                    text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )
                )
            ).scalars()
            killed = 0
            for connection_id in ids:
                await connection.execute(text(f"KILL {int(connection_id)}"))
                killed += 1
            return killed
    finally:
        await killer.dispose()


async def fill_pool(db: Database, n: int) -> None:
    """Check out ``n`` connections at once so the pool holds that many open ones afterwards."""
    barrier = asyncio.Barrier(n)

    async def hold() -> None:
        async with db.transaction() as unit:
            await unit.session.execute(text("SELECT 1"))
            await barrier.wait()

    await asyncio.gather(*(hold() for _ in range(n)))


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_killed_pool_connections_are_replaced_by_pre_ping(db_url: str) -> None:
    async with Database(db_url) as db:
        await db.create_all(metadata)
        await fill_pool(db, 3)
        assert db.pool_stats().open == 3
        assert await kill_other_connections(db_url) == 3
        for n in range(1, 6):
            async with db.transaction() as unit:
                await unit.session.execute(insert(counters).values(id=n))
        assert await db.ping() >= 0
        async with db.session() as session:
            assert (await session.execute(select(counters.c.id))).scalars().all() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_without_pre_ping_one_operation_fails_cleanly_then_the_pool_recovers(db_url: str) -> None:
    async with Database(db_url, pool_pre_ping=False) as db:
        await fill_pool(db, 2)
        await kill_other_connections(db_url)
        with pytest.raises(ServiceUnavailableError) as caught:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
        assert caught.value.code == "db_unavailable"
        # SQLAlchemy invalidated the whole pool on the disconnect: the next operations reconnect.
        for _ in range(3):
            async with db.session() as session:
                assert (await session.execute(text("SELECT 1"))).scalar() == 1


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_connection_killed_inside_a_transaction_is_service_unavailable(db_url: str) -> None:
    async def killed_midway(db: Database) -> None:
        async with db.transaction() as unit:
            await unit.session.execute(text("SELECT 1"))
            await kill_other_connections(db_url)
            await unit.session.execute(text("SELECT 1"))

    async with Database(db_url) as db:
        with pytest.raises(ServiceUnavailableError):
            await killed_midway(db)
        assert db.current() is None
        assert await db.ping() >= 0


# --- settings and named databases --------------------------------------------------------------------


async def test_from_settings_builds_a_working_database(db_url: str) -> None:
    settings = DatabaseSettings(url=db_url, pool_size=2, statement_timeout=3, connect_timeout=2)
    async with Database.from_settings(settings, name="orders") as db:
        assert db.name == "orders"
        assert db.pool_stats().size == 2
        assert db.statement_timeout == 3
        assert await db.ping() >= 0


async def test_registry_from_settings_starts_and_stops_named_databases(tmp_path: Path) -> None:
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/main.db"),
        databases={"reporting": DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/reporting.db")},
    )
    registry = DatabaseRegistry.from_settings(settings)
    assert list(registry) == ["default", "reporting"]
    async with registry:
        assert registry.default.started
        assert registry["reporting"].name == "reporting"
        await registry["reporting"].create_all(metadata)
        async with registry["reporting"].transaction() as unit:
            await unit.session.execute(insert(counters).values(id=1))
        # Separate files: the default database has no such table.
        async with registry.default.session() as session:
            tables = (await session.execute(text("SELECT name FROM sqlite_master"))).scalars().all()
        assert "life_counters" not in tables
    assert not registry.default.started
    assert not registry["reporting"].started
    with pytest.raises(KeyError, match="configured: default, reporting"):
        registry["billing"]


async def test_registry_start_failure_stops_the_databases_already_started(tmp_path: Path) -> None:
    good = Database(f"sqlite+aiosqlite:///{tmp_path}/ok.db")
    bad = Database("postgresql+asyncpg://u@127.0.0.1:1/x", name="bad", start_timeout=0.1, connect_timeout=0.1)
    registry = DatabaseRegistry({"default": good, "bad": bad})
    with pytest.raises(ServiceUnavailableError):
        await registry.start()
    assert not good.started


def test_registry_refuses_two_databases_with_one_name(tmp_path: Path) -> None:
    registry = DatabaseRegistry({"default": Database(f"sqlite+aiosqlite:///{tmp_path}/a.db")})
    with pytest.raises(ConfigError, match="two databases are named 'default'"):
        registry.add(Database(f"sqlite+aiosqlite:///{tmp_path}/b.db"))
