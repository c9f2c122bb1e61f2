"""Driver errors leave a Database as mainspring errors, on every backend; conflicts are rerun."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase

from mainspring.db import Database, TransactionConflictError, UnitOfWork, retry_on_conflict
from mainspring.errors import (
    ConflictError,
    DeadlineExceededError,
    InternalError,
    MainspringError,
    ServiceUnavailableError,
    ValidationError,
)

metadata = MetaData(
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)
accounts = Table(
    "err_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(50), nullable=False, unique=True),
    Column("balance", Integer, nullable=False, default=0),
    CheckConstraint("balance >= 0", name="balance_positive"),
)
transfers = Table(
    "err_transfers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("account_id", Integer, ForeignKey("err_accounts.id"), nullable=False),
)


class _Base(DeclarativeBase):
    metadata = metadata


class Account(_Base):
    """The ORM view of ``err_accounts`` (ORM writes reach the database at flush)."""

    __table__ = accounts


@pytest.fixture
async def db(database: Database) -> Database:
    await database.create_all(metadata)
    async with database.transaction() as unit:
        await unit.session.execute(
            insert(accounts),
            [{"id": 1, "email": "a@x", "balance": 10}, {"id": 2, "email": "b@x", "balance": 10}],
        )
    return database


async def run(db: Database, statement: object) -> None:
    async with db.transaction() as unit:
        await unit.session.execute(statement)  # type: ignore[call-overload]


async def test_unique_violation_is_a_conflict_naming_the_columns(db: Database, db_backend: str) -> None:
    with pytest.raises(ConflictError) as caught:
        await run(db, insert(accounts).values(id=3, email="a@x"))
    error = caught.value
    assert type(error) is ConflictError
    assert error.code == "unique_violation"
    if db_backend == "sqlite":  # SQLite reports table and columns, not the constraint name
        assert error.details["columns"] == ["email"]
        assert "err_accounts(email)" in error.message
    else:
        assert error.details["constraint"] == "uq_err_accounts_email"
        assert "uq_err_accounts_email" in error.message
    # The duplicate value itself is not echoed back.
    assert "a@x" not in error.message
    assert error.__cause__ is not None


async def test_foreign_key_violation_is_a_validation_error(db: Database, db_backend: str) -> None:
    with pytest.raises(ValidationError) as caught:
        await run(db, insert(transfers).values(id=1, account_id=99))
    assert caught.value.code == "foreign_key_violation"
    if db_backend != "sqlite":
        assert caught.value.details["constraint"] == "fk_err_transfers_account_id_err_accounts"
        assert caught.value.errors[0]["loc"] == ["account_id"]


async def test_not_null_violation_is_a_validation_error_naming_the_column(db: Database) -> None:
    with pytest.raises(ValidationError) as caught:
        await run(db, insert(accounts).values(id=3, email=None))
    assert caught.value.code == "not_null_violation"
    assert caught.value.details["columns"] == ["email"]
    assert caught.value.errors == [{"loc": ["email"], "msg": "must not be null", "type": "not_null"}]


async def test_check_violation_is_a_validation_error_naming_the_constraint(db: Database) -> None:
    with pytest.raises(ValidationError) as caught:
        await run(db, update(accounts).where(accounts.c.id == 1).values(balance=-5))
    assert caught.value.code == "check_violation"
    assert caught.value.details["constraint"] == "ck_err_accounts_balance_positive"


class Boom(Exception):
    """Ends a transaction with a rollback."""


async def test_violation_in_a_joined_session_is_translated_at_its_boundary(db: Database) -> None:
    async def joined_insert() -> None:
        async with db.session() as session:
            await session.execute(insert(accounts).values(id=3, email="a@x"))

    async def unit_of_work() -> None:
        async with db.transaction():
            # The repository-style call already raises a mainspring error, inside the unit.
            with pytest.raises(ConflictError):
                await joined_insert()
            raise Boom

    with pytest.raises(Boom):
        await unit_of_work()


async def test_flush_translates_constraint_violations(db: Database) -> None:
    async def flush_duplicate(unit: UnitOfWork) -> None:
        unit.session.add(Account(id=3, email="a@x", balance=0))  # ORM: sent at flush, not at add
        await unit.flush()

    async def unit_of_work() -> None:
        async with db.transaction() as unit:
            with pytest.raises(ConflictError):
                await flush_duplicate(unit)
            raise Boom

    with pytest.raises(Boom):
        await unit_of_work()


async def test_sql_error_is_an_internal_error_not_a_driver_exception(db: Database) -> None:
    with pytest.raises(InternalError) as caught:
        await run(db, text("SELEC 1"))
    assert caught.value.code == "db_error"
    assert caught.value.to_problem()["detail"] == "Internal Server Error"


async def test_pool_timeout_is_service_unavailable_and_counted(db_url: str) -> None:
    db = Database(db_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    async with db:
        async with db.engine.connect() as held:
            await held.execute(text("SELECT 1"))  # holds the only connection
            assert db.pool_stats().checked_out == 1
            with pytest.raises(ServiceUnavailableError) as caught:
                async with db.session() as session:
                    await session.execute(text("SELECT 1"))
        assert caught.value.code == "db_pool_exhausted"
        stats = db.pool_stats()
        assert (stats.waits, stats.timeouts, stats.checked_out) == (1, 1, 0)


@pytest.mark.parametrize("db_url", ["postgres", "mariadb"], indirect=True)
async def test_statement_timeout_cancels_a_slow_statement(db_url: str, db_backend: str) -> None:
    sleep = "SELECT pg_sleep(2)" if db_backend == "postgres" else "SELECT SLEEP(2)"
    async with Database(db_url, statement_timeout=0.2) as db:
        with pytest.raises(DeadlineExceededError) as caught:
            await run(db, text(sleep))
        assert caught.value.code == "db_statement_timeout"
        assert await db.ping() >= 0  # the connection is still good


# --- conflicts: deadlocks, serialization failures, a busy SQLite ----------------------------------


async def provoke_conflict(db: Database, *, retry: bool) -> tuple[list[object], int]:
    """Run two units that conflict: a deadlock on servers, a write lock held past busy_timeout on SQLite.

    Returns each unit's result (or exception) and how many times the units ran in all.
    """
    first_locked, second_locked = asyncio.Event(), asyncio.Event()
    runs = 0

    async def one(unit: UnitOfWork, mine: int, other: int, locked: asyncio.Event, wait: asyncio.Event) -> int:
        nonlocal runs
        runs += 1
        if db.dialect == "postgresql":
            # Detect the deadlock in 50 ms rather than the default 1 s.
            await unit.session.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        try:
            await unit.session.execute(
                update(accounts).where(accounts.c.id == mine).values(balance=accounts.c.balance + 1)
            )
        finally:
            locked.set()
        await asyncio.wait_for(wait.wait(), 5)
        await unit.session.execute(
            update(accounts).where(accounts.c.id == other).values(balance=accounts.c.balance + 1)
        )
        return mine

    async def first(unit: UnitOfWork) -> int:
        return await one(unit, 1, 2, first_locked, second_locked)

    async def second(unit: UnitOfWork) -> int:
        return await one(unit, 2, 1, second_locked, first_locked)

    async def unit_run(fn: object, locked: asyncio.Event) -> int:
        try:
            if retry:
                return await db.run_in_transaction(fn, attempts=5, base_delay=0.01)  # type: ignore[arg-type]
            async with db.transaction() as unit:
                return await fn(unit)  # type: ignore[operator, no-any-return]
        finally:
            # On SQLite the loser fails before taking its lock: let the winner go on.
            locked.set()

    results = await asyncio.gather(
        unit_run(first, first_locked), unit_run(second, second_locked), return_exceptions=True
    )
    return list(results), runs


async def test_deadlock_or_busy_database_is_a_transaction_conflict(db_url: str) -> None:
    async with Database(db_url, busy_timeout=0) as db:
        await db.create_all(metadata)
        async with db.transaction() as unit:
            await unit.session.execute(insert(accounts), [{"id": 1, "email": "a"}, {"id": 2, "email": "b"}])
        results, _runs = await provoke_conflict(db, retry=False)
    conflicts = [r for r in results if isinstance(r, TransactionConflictError)]
    assert len(conflicts) == 1, results
    assert conflicts[0].code == "transaction_conflict"
    assert not any(isinstance(r, Exception) and not isinstance(r, MainspringError) for r in results)


async def test_run_in_transaction_reruns_the_loser_of_a_conflict(db_url: str) -> None:
    async with Database(db_url, busy_timeout=0) as db:
        await db.create_all(metadata)
        async with db.transaction() as unit:
            await unit.session.execute(insert(accounts), [{"id": 1, "email": "a"}, {"id": 2, "email": "b"}])
        results, runs = await provoke_conflict(db, retry=True)
        assert sorted(results) == [1, 2]  # type: ignore[type-var]
        assert runs >= 3
        async with db.transaction() as unit:
            balances = (
                await unit.session.execute(text("SELECT balance FROM err_accounts ORDER BY id"))
            ).all()
        assert [b for (b,) in balances] == [2, 2]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_serialization_failure_is_rerun_by_retry_on_conflict(db: Database) -> None:
    both_read = asyncio.Barrier(2)
    runs = 0

    @retry_on_conflict(attempts=3, base_delay=0.01)
    async def add_total_as_new_row(new_id: int) -> None:
        nonlocal runs
        runs += 1
        async with db.transaction(isolation_level="SERIALIZABLE") as unit:
            total = await unit.session.scalar(text("SELECT SUM(balance) FROM err_accounts"))
            if runs <= 2:
                await both_read.wait()  # both have read before either writes: a write skew
            await unit.session.execute(insert(accounts).values(id=new_id, email=f"{new_id}@x", balance=total))

    await asyncio.gather(add_total_as_new_row(3), add_total_as_new_row(4))
    assert runs == 3
    async with db.transaction() as unit:
        rows = (await unit.session.execute(text("SELECT balance FROM err_accounts WHERE id > 2"))).all()
    # Serial order: the second sees the first's row (20, then 40).
    assert sorted(b for (b,) in rows) == [20, 40]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_retry_on_conflict_gives_up_after_the_attempts(db: Database) -> None:
    runs = 0

    @retry_on_conflict(attempts=2, base_delay=0.001)
    async def always_conflicts() -> None:
        nonlocal runs
        runs += 1
        async with db.transaction() as unit:
            await unit.session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
            )

    with pytest.raises(TransactionConflictError) as caught:
        await always_conflicts()
    assert runs == 2
    assert caught.value.details["attempts"] == 2


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_retry_on_conflict_does_not_rerun_inside_an_active_transaction(db: Database) -> None:
    runs = 0

    @retry_on_conflict(attempts=3)
    async def conflicts() -> None:
        nonlocal runs
        runs += 1
        async with db.transaction() as unit:
            await unit.session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'deadlock_detected'; END $$")
            )

    with pytest.raises(TransactionConflictError):
        async with db.transaction():
            await conflicts()
    assert runs == 1


def test_retry_on_conflict_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry_on_conflict(0)
