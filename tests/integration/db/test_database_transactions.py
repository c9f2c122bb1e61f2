"""Units of work on every backend: commit, rollback, SAVEPOINTs, on_commit, joining, task isolation."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import DeclarativeBase

from mainspring.db import Database, UnitOfWork
from mainspring.errors import ConflictError, InternalError

metadata = MetaData()
items = Table(
    "tx_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(50), nullable=False, unique=True),
)


class _Base(DeclarativeBase):
    metadata = metadata


class Item(_Base):
    """The ORM view of ``tx_items``: ORM writes reach the database at flush."""

    __table__ = items


@pytest.fixture
async def db(database: Database) -> Database:
    await database.create_all(metadata)
    return database


async def names(db: Database) -> list[str]:
    async with db.transaction() as unit:
        rows = await unit.session.execute(select(items.c.name).order_by(items.c.id))
        return list(rows.scalars())


class Boom(Exception):
    """An application error raised inside a unit of work."""


async def test_transaction_commits_when_the_block_succeeds(db: Database) -> None:
    async with db.transaction() as unit:
        await unit.session.execute(insert(items).values(id=1, name="a"))
    assert await names(db) == ["a"]


async def test_transaction_rolls_back_and_reraises_an_application_error(db: Database) -> None:
    async def fails() -> None:
        async with db.transaction() as unit:
            await unit.session.execute(insert(items).values(id=1, name="a"))
            raise Boom

    with pytest.raises(Boom):
        await fails()
    assert await names(db) == []


async def test_nested_transaction_rolls_back_only_the_inner_part(db: Database) -> None:
    async def inner_fails(outer: UnitOfWork) -> None:
        async with db.transaction() as inner:
            assert inner.nested
            assert inner.session is outer.session
            await inner.session.execute(insert(items).values(id=2, name="inner"))
            raise Boom

    async with db.transaction() as outer:
        await outer.session.execute(insert(items).values(id=1, name="outer"))
        with pytest.raises(Boom):
            await inner_fails(outer)
        await outer.session.execute(insert(items).values(id=3, name="after"))
    assert await names(db) == ["outer", "after"]


async def test_nested_transaction_recovers_from_a_constraint_violation(db: Database) -> None:
    async def duplicate() -> None:
        async with db.transaction() as inner:
            await inner.session.execute(insert(items).values(id=2, name="a"))

    async with db.transaction() as outer:
        await outer.session.execute(insert(items).values(id=1, name="a"))
        with pytest.raises(ConflictError):
            await duplicate()
        # The SAVEPOINT rollback leaves the outer transaction usable, even on PostgreSQL.
        await outer.session.execute(insert(items).values(id=3, name="b"))
    assert await names(db) == ["a", "b"]


async def test_savepoint_of_an_outer_unit_that_has_not_touched_the_database_yet(db: Database) -> None:
    async with db.transaction() as seed:
        await seed.session.execute(insert(items).values(id=1, name="a"))

    async def duplicate() -> None:
        async with db.transaction() as inner:
            await inner.session.execute(insert(items).values(id=2, name="a"))

    async with db.transaction() as outer:
        # No statement has run in the outer unit yet: the SAVEPOINT must still be real, so the
        # failed insert rolls back to it instead of aborting the whole transaction (PostgreSQL).
        with pytest.raises(ConflictError):
            await duplicate()
        await outer.session.execute(insert(items).values(id=3, name="b"))
    assert await names(db) == ["a", "b"]


async def test_failed_orm_flush_in_a_savepoint_rolls_back_only_the_savepoint(db: Database) -> None:
    async def duplicate_via_orm() -> None:
        async with db.transaction() as inner:
            inner.session.add(Item(id=2, name="b"))
            inner.session.add(Item(id=3, name="a"))
            await inner.flush()  # SQLAlchemy deactivates the savepoint when a flush fails

    async with db.transaction() as outer:
        outer.session.add(Item(id=1, name="a"))
        await outer.flush()
        with pytest.raises(ConflictError):
            await duplicate_via_orm()
        outer.session.add(Item(id=4, name="c"))
    assert await names(db) == ["a", "c"]


async def test_committed_nested_transaction_is_undone_by_the_outer_rollback(db: Database) -> None:
    async def outer_fails() -> None:
        async with db.transaction():
            async with db.transaction() as inner:
                await inner.session.execute(insert(items).values(id=1, name="inner"))
            raise Boom

    with pytest.raises(Boom):
        await outer_fails()
    assert await names(db) == []


async def test_on_commit_runs_after_the_outer_commit_only(db: Database) -> None:
    calls: list[str] = []

    async def seen_after_commit() -> None:
        # Runs after the commit, outside the unit: a new transaction sees the row.
        assert db.current() is None
        calls.append(",".join(await names(db)))

    async with db.transaction() as unit:
        await unit.session.execute(insert(items).values(id=1, name="a"))
        unit.on_commit(seen_after_commit)
        unit.on_commit(lambda: calls.append("sync"))
        assert calls == []
    assert calls == ["a", "sync"]


async def test_on_commit_does_not_run_on_rollback(db: Database) -> None:
    calls: list[str] = []

    async def fails() -> None:
        async with db.transaction() as unit:
            unit.on_commit(lambda: calls.append("outer"))
            raise Boom

    with pytest.raises(Boom):
        await fails()
    assert calls == []


async def test_on_commit_in_a_rolled_back_savepoint_is_dropped(db: Database) -> None:
    calls: list[str] = []

    async def inner_fails() -> None:
        async with db.transaction() as inner:
            inner.on_commit(lambda: calls.append("rolled back"))
            raise Boom

    async with db.transaction() as outer:
        outer.on_commit(lambda: calls.append("outer"))
        with pytest.raises(Boom):
            await inner_fails()
        async with db.transaction() as kept:
            kept.on_commit(lambda: calls.append("released"))
        assert calls == []
    assert calls == ["outer", "released"]


async def test_on_commit_in_a_released_savepoint_waits_for_the_outer_commit(db: Database) -> None:
    calls: list[str] = []

    async def outer_fails() -> None:
        async with db.transaction():
            async with db.transaction() as inner:
                inner.on_commit(lambda: calls.append("inner"))
            raise Boom

    with pytest.raises(Boom):
        await outer_fails()
    assert calls == []


async def test_failing_on_commit_callback_does_not_stop_the_others(db: Database) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("callback bug")

    async with db.transaction() as unit:
        await unit.session.execute(insert(items).values(id=1, name="a"))
        unit.on_commit(broken)
        unit.on_commit(lambda: calls.append("second"))
    assert calls == ["second"]
    assert await names(db) == ["a"]


async def test_on_commit_after_the_block_is_refused(db: Database) -> None:
    async with db.transaction() as unit:
        pass
    with pytest.raises(InternalError, match="finished unit of work"):
        unit.on_commit(lambda: None)


async def test_session_joins_the_active_transaction(db: Database) -> None:
    async def fails() -> None:
        async with db.transaction() as unit:
            async with db.session() as session:
                assert session is unit.session
                await session.execute(insert(items).values(id=1, name="joined"))
            raise Boom

    with pytest.raises(Boom):
        await fails()
    # The joined write went with the outer rollback.
    assert await names(db) == []


async def test_session_outside_a_transaction_commits_on_its_own(db: Database) -> None:
    async with db.session() as session:
        assert db.current() is not None
        await session.execute(insert(items).values(id=1, name="alone"))
    assert db.current() is None
    assert await names(db) == ["alone"]


async def test_current_tracks_the_innermost_unit(db: Database) -> None:
    assert db.current() is None
    async with db.transaction() as outer:
        assert db.current() is outer
        async with db.transaction() as inner:
            assert db.current() is inner
            assert inner.parent is outer
        assert db.current() is outer
    assert db.current() is None


async def test_nested_transaction_cannot_change_the_isolation_level(db: Database) -> None:
    async with db.transaction():
        with pytest.raises(InternalError, match="isolation level"):
            await db.transaction(isolation_level="SERIALIZABLE").__aenter__()


async def test_concurrent_tasks_each_get_their_own_unit_of_work(db: Database) -> None:
    started = asyncio.Event()
    seen: dict[int, UnitOfWork] = {}

    async def worker(n: int) -> None:
        assert db.current() is None
        async with db.transaction() as unit:
            seen[n] = unit
            await unit.session.execute(insert(items).values(id=n, name=f"w{n}"))
            if n == 1:
                started.set()
            else:
                await started.wait()
            assert db.current() is unit
            if n == 3:
                raise Boom

    results = await asyncio.gather(*(worker(n) for n in (1, 2, 3)), return_exceptions=True)
    assert [type(r) for r in results] == [type(None), type(None), Boom]
    assert len({id(u.session) for u in seen.values()}) == 3
    assert await names(db) == ["w1", "w2"]


async def test_units_of_two_databases_nest_independently(db: Database, tmp_path: object) -> None:
    other = Database(f"sqlite+aiosqlite:///{tmp_path}/other.db")

    async def outer_fails() -> None:
        async with db.transaction() as a:
            async with other.transaction() as b:
                assert not b.nested
                assert db.current() is a
                await b.session.execute(insert(items).values(id=1, name="other"))
            raise Boom

    async with other:
        await other.create_all(metadata)
        with pytest.raises(Boom):
            await outer_fails()
        assert await names(other) == ["other"]
        assert await names(db) == []


async def test_repository_is_made_once_per_unit(db: Database) -> None:
    class Counter:
        def __init__(self, database: Database) -> None:
            self.database = database

    async with db.transaction() as unit:
        first = unit.repository(Counter)
        assert unit.repository(Counter) is first
        assert first.database is db


async def test_flush_sends_pending_orm_changes(db: Database) -> None:
    async with db.transaction() as unit:
        await unit.session.execute(insert(items).values(id=1, name="a"))
        await unit.flush()
        count = await unit.session.scalar(select(func.count()).select_from(items))
    assert count == 1


async def test_tasks_sharing_a_unit_of_work_at_once_are_refused_clearly(db: Database) -> None:
    holding, finished = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with db.session() as session:
            await session.execute(insert(items).values(id=1, name="holder"))
            holding.set()
            await finished.wait()

    async def intruder() -> None:
        await holding.wait()
        try:
            with pytest.raises(InternalError, match="in use by another task"):
                await db.session().__aenter__()
        finally:
            finished.set()

    async with db.transaction():
        # Both tasks inherit the unit of work, but only one may use its session at a time.
        await asyncio.gather(holder(), intruder())
    assert await names(db) == ["holder"]


async def test_a_task_awaited_in_turn_joins_the_unit_of_work(db: Database) -> None:
    async def joined_insert() -> int:
        async with db.session() as session:
            await session.execute(insert(items).values(id=1, name="via task"))
            return id(session)

    async with db.transaction() as unit:
        # wait_for runs the coroutine in a task of its own (Python 3.11); it is not concurrent use.
        assert await asyncio.wait_for(joined_insert(), 5) == id(unit.session)
        assert await asyncio.create_task(asyncio.sleep(0, result=1)) == 1
    assert await names(db) == ["via task"]
