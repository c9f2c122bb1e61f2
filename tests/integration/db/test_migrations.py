"""Migrations on SQLite, PostgreSQL and MariaDB: autogenerate, upgrade, downgrade, the library branch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, insert, inspect, select
from sqlalchemy.engine import Connection

from mainspring.db import NAMING_CONVENTION, ChangeLog, Database, Migrator
from mainspring.db.migrations import LIBRARY_BRANCH, LIBRARY_TABLES, SERVICE_BRANCH, MigrationError
from mainspring.events import InboxEntry, OutboxEntry
from mainspring.security import SqlApiKeyStore


def shop_metadata(*, email: bool = False, name: bool = True) -> MetaData:
    """A parent/child pair; ``email`` adds a column to the parent, ``name=False`` drops one."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    parent_columns = [Column("id", Integer, primary_key=True)]
    if name:
        parent_columns.append(Column("name", String(50), nullable=True))
    if email:
        parent_columns.append(Column("email", String(100), nullable=True))
    Table("shop_customer", metadata, *parent_columns)
    Table(
        "shop_order",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("customer_id", ForeignKey("shop_customer.id", ondelete="CASCADE"), nullable=False, index=True),
    )
    return metadata


async def table_names(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def column_names(database: Database, table: str) -> list[str]:
    async with database.engine.connect() as connection:
        columns = await connection.run_sync(lambda sync: inspect(sync).get_columns(table))
    return [column["name"] for column in columns]


def library_revisions(migrator: Migrator) -> list[str]:
    """The ids of the library's own revisions, oldest first (``ms_0001``, ``ms_0002``, ...)."""
    return sorted(info.id for info in migrator.history() if info.library)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    return tmp_path / "migrations"


async def test_init_autogenerate_upgrade_current_downgrade_round_trip(
    database: Database, migrations: Path
) -> None:
    migrator = Migrator(database, script_location=migrations, metadata=shop_metadata())
    migrator.init()
    assert await migrator.upgrade() != [], "the library's branch is applied first"

    written = await migrator.revision("create shop", autogenerate=True)

    assert written is not None
    assert written.path.parent.name == "versions"
    assert written.path.parent.parent.name == migrations.name
    assert written.branch_labels == (SERVICE_BRANCH,)
    assert "op.create_table('shop_customer'" in written.path.read_text()
    # Dropping the table drops its indexes; MySQL refuses to drop first the one a foreign key needs.
    assert "drop_index" not in written.path.read_text()
    steps = await migrator.upgrade()
    assert [(s.revision, s.direction) for s in steps] == [(written.id, "upgrade")]
    assert {"shop_customer", "shop_order", "change_log"} <= await table_names(database)

    current = await migrator.current()
    heads = {info.id for info in migrator.history() if info.is_head}
    assert {info.id for info in current} == heads
    assert {info.library for info in current} == {True, False}
    assert await migrator.pending() == []

    reverted = await migrator.downgrade("base")

    assert {s.revision for s in reverted} == {written.id, *library_revisions(migrator)}
    assert all(s.direction == "downgrade" for s in reverted)
    assert await table_names(database) <= {"alembic_version"}
    assert await migrator.current() == []
    assert [info.id for info in await migrator.pending()][-1] == written.id
    assert database.started, "a Database handed in started stays started"


async def test_add_and_drop_column_keep_the_rows_of_referencing_tables(
    database: Database, migrations: Path
) -> None:
    # On SQLite both changes rebuild the parent table (batch mode); with foreign keys enforced the
    # rebuild's DROP TABLE would cascade to the children, so the child row proves enforcement was off.
    migrator = Migrator(database, script_location=migrations, metadata=shop_metadata())
    migrator.init()
    await migrator.upgrade()
    first = await migrator.revision("create shop", autogenerate=True)
    await migrator.upgrade()
    async with database.transaction() as unit:
        tables = shop_metadata().tables
        await unit.session.execute(insert(tables["shop_customer"]).values(id=1, name="ada"))
        await unit.session.execute(insert(tables["shop_order"]).values(id=7, customer_id=1))

    migrator = Migrator(database, script_location=migrations, metadata=shop_metadata(email=True))
    added = await migrator.revision("add email", autogenerate=True)
    await migrator.upgrade()
    migrator = Migrator(database, script_location=migrations, metadata=shop_metadata(email=True, name=False))
    dropped = await migrator.revision("drop name", autogenerate=True)
    await migrator.upgrade()

    assert added is not None
    assert "batch_op.add_column" in added.path.read_text()
    assert dropped is not None
    assert "batch_op.drop_column('name')" in dropped.path.read_text()
    assert await column_names(database, "shop_customer") == ["id", "email"]
    async with database.session() as session:
        orders = (await session.execute(select(shop_metadata().tables["shop_order"]))).all()
    assert [tuple(row) for row in orders] == [(7, 1)]

    assert first is not None
    await migrator.downgrade(first.id)
    assert await column_names(database, "shop_customer") == ["id", "name"]
    async with database.session() as session:
        names = (await session.execute(select(shop_metadata().tables["shop_customer"].c.name))).scalars()
        assert list(names) == [None], "a dropped column comes back empty"
    if database.dialect == "sqlite":
        async with database.engine.connect() as connection:
            enforced = (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        assert enforced == 1, "foreign key enforcement is back on after the migration"


def _library_diff(connection: Connection) -> list[object]:
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    ChangeLog.__table__.to_metadata(metadata)
    for table in SqlApiKeyStore.metadata.sorted_tables:  # the security stores' tables (ms_0002)
        table.to_metadata(metadata)
    for model in (OutboxEntry, InboxEntry):  # the outbox and the inbox (ms_0003, ms_0004)
        model.__table__.to_metadata(metadata)
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    # Library tables whose models are not listed above are compared by their own subsystem's tests.
    others = LIBRARY_TABLES - set(metadata.tables)
    return [diff for diff in compare_metadata(context, metadata) if _table_of(diff) not in others]


def _table_of(diff: object) -> str | None:
    target = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    table = target if isinstance(target, Table) else getattr(target, "table", None)
    return table.name if isinstance(table, Table) else None


async def test_library_migrations_match_the_models(database: Database, migrations: Path) -> None:
    migrator = Migrator(database, script_location=migrations)
    migrator.init()

    steps = await migrator.upgrade(f"{LIBRARY_BRANCH}@head")

    assert [s.revision for s in steps] == library_revisions(migrator)
    assert await table_names(database) == {"alembic_version", *LIBRARY_TABLES}
    async with database.engine.connect() as connection:
        diff = await connection.run_sync(_library_diff)
    assert diff == []


async def test_service_autogenerate_neither_creates_nor_drops_library_tables(
    database: Database, migrations: Path
) -> None:
    migrator = Migrator(database, script_location=migrations)
    migrator.init()
    await migrator.upgrade()

    # The models of a service share mainspring's Base, so their metadata holds change_log too.
    shared = shop_metadata()
    ChangeLog.__table__.to_metadata(shared)
    await Migrator(database, script_location=migrations, metadata=shop_metadata()).revision(
        "create shop", autogenerate=True
    )
    await migrator.upgrade()
    with_library = await Migrator(database, script_location=migrations, metadata=shared).revision(
        "models including change_log", autogenerate=True
    )
    without_library = await Migrator(database, script_location=migrations, metadata=MetaData()).revision(
        "models without change_log", autogenerate=True
    )

    assert with_library is None
    assert without_library is not None
    upgrade_part = without_library.path.read_text().split("def downgrade")[0]
    assert "op.drop_table('shop_customer')" in upgrade_part, "tables not in the metadata are dropped..."
    assert "'change_log'" not in upgrade_part, "...but not the library's"


async def test_autogenerate_on_a_database_behind_the_history_asks_for_an_upgrade(
    database: Database, migrations: Path
) -> None:
    migrator = Migrator(database, script_location=migrations, metadata=shop_metadata())
    migrator.init()

    with pytest.raises(MigrationError, match="not at the latest revision: run `mainspring db upgrade`"):
        await migrator.revision("too early", autogenerate=True)


async def test_unknown_revision_is_a_migration_error(database: Database, migrations: Path) -> None:
    migrator = Migrator(database, script_location=migrations)
    migrator.init()

    with pytest.raises(MigrationError, match="unknown revision 'cafe0000'"):
        await migrator.upgrade("cafe0000")


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_concurrent_upgrades_apply_each_revision_once(db_url: str, migrations: Path) -> None:
    # Replicas that all migrate at start-up: the migration lock makes the others wait, then find
    # nothing left to do.
    Migrator(script_location=migrations, metadata=shop_metadata()).init()
    (migrations / "versions" / "aaaa_shop.py").write_text(SHOP_REVISION)
    databases = [Database(db_url) for _ in range(3)]
    for database in databases:
        await database.start()
    try:
        # Without the lock this deadlocks or fails; the timeout turns a hang into a failure.
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(Migrator(database, script_location=migrations).upgrade() for database in databases)
            )
        applied = sorted(step.revision for steps in results for step in steps)
        library = library_revisions(Migrator(databases[0], script_location=migrations))
        assert applied == sorted(["aaaa", *library])
        assert {info.id for info in await Migrator(databases[0], script_location=migrations).current()} == {
            "aaaa",
            library[-1],
        }
    finally:
        for database in databases:
            await database.stop()


SHOP_REVISION = '''"""Create the shop tables.

Revision ID: aaaa
"""

import sqlalchemy as sa
from alembic import op

revision = "aaaa"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade() -> None:
    op.create_table("shop_customer", sa.Column("id", sa.Integer(), primary_key=True))
    op.create_table("shop_order", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("shop_order")
    op.drop_table("shop_customer")
'''


BROKEN_REVISION = '''"""Half works.

Revision ID: bbbb
"""

import sqlalchemy as sa
from alembic import op

revision = "bbbb"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT no_such_column FROM no_such_table")


def downgrade() -> None:
    op.drop_table("half_done")
'''


async def test_a_failing_revision_is_a_migration_error_naming_the_driver_message(
    database: Database, migrations: Path
) -> None:
    migrator = Migrator(database, script_location=migrations)
    migrator.init()
    (migrations / "versions" / "bbbb_half.py").write_text(BROKEN_REVISION)

    with pytest.raises(MigrationError, match=r"upgrade to 'heads' failed: .*no_such_(table|column)"):
        await migrator.upgrade()

    if database.dialect == "postgresql":
        # Transactional DDL: the whole upgrade rolled back, the library's branch included.
        assert await table_names(database) == set()
        assert await migrator.current() == []
