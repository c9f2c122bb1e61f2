"""Model mixins on SQLite, PostgreSQL and MariaDB: timestamps, audit columns, soft delete, versions."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from sqlalchemy import CheckConstraint, ForeignKey, MetaData, String, func, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from mainspring.context import Principal, bind_context
from mainspring.db import (
    NAMING_CONVENTION,
    AuditColumns,
    Base,
    Database,
    IntPrimaryKey,
    Repository,
    SoftDelete,
    Timestamps,
    UTCDateTime,
    UUIDPrimaryKey,
    Versioned,
)
from mainspring.errors import ConflictError, ValidationError


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Doc(UUIDPrimaryKey, Timestamps, AuditColumns, SoftDelete, Versioned, Model):
    __tablename__ = "mx_docs"

    title: Mapped[str] = mapped_column(String(100))
    due: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class Counter(IntPrimaryKey, Model):
    __tablename__ = "mx_counters"

    value: Mapped[int] = mapped_column(default=0)


@pytest.fixture
async def docs(database: Database) -> Repository[Doc]:
    await database.create_all(Model.metadata)
    return Repository(database, Doc)


ALICE = Principal(id="alice")
BOB = Principal(id="bob", kind="service")


async def test_timestamps_are_aware_utc_with_microseconds_on_every_backend(docs: Repository[Doc]) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    due = dt.datetime(2030, 5, 17, 14, 30, 15, 123456, tzinfo=plus_two)
    added = await docs.add(Doc(title="a", due=due))
    loaded = await docs.get(added.id)
    assert loaded.created_at.tzinfo is dt.UTC
    assert loaded.updated_at.tzinfo is dt.UTC
    assert loaded.created_at == loaded.updated_at == added.created_at
    assert abs(loaded.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert loaded.due == due  # the same instant ...
    assert loaded.due is not None
    assert loaded.due.tzinfo is dt.UTC
    assert loaded.due.microsecond == 123456
    later = await docs.list(Doc.due > dt.datetime(2030, 5, 17, 12, 30, 15, tzinfo=dt.UTC))
    assert [d.id for d in later] == [added.id]


async def test_a_naive_datetime_is_refused_with_a_clear_error(
    docs: Repository[Doc], database: Database
) -> None:
    naive = dt.datetime(2030, 1, 1, 12, 0)
    with pytest.raises(ValidationError, match="naive datetime 2030-01-01T12:00:00 given for 'due'"):
        Doc(title="a", due=naive)
    doc = await docs.add(Doc(title="a"))
    with pytest.raises(ValidationError, match="timezone-aware"):
        doc.due = naive
    with pytest.raises(ValidationError, match="naive datetime"):
        await docs.list(Doc.due < naive)
    with pytest.raises(ValidationError, match="naive datetime"):
        await docs.update(doc.id, due=naive)
    with pytest.raises(ValidationError, match="naive datetime"):
        async with database.session() as session:
            await session.execute(insert(Doc.__table__).values(id=uuid.uuid4(), title="b", due=naive))
    assert await docs.count() == 1


async def test_updated_at_moves_on_update_and_created_at_stays(docs: Repository[Doc]) -> None:
    doc = await docs.add(Doc(title="a"))
    await asyncio.sleep(0.002)
    changed = await docs.update(doc.id, title="b")
    assert changed.created_at == doc.created_at
    assert changed.updated_at > doc.created_at


async def test_audit_columns_come_from_the_principal_in_the_context(docs: Repository[Doc]) -> None:
    anonymous = await docs.add(Doc(title="nobody"))
    assert (anonymous.created_by, anonymous.updated_by) == (None, None)
    with bind_context(principal=ALICE):
        doc = await docs.add(Doc(title="a"))
    with bind_context(principal=BOB):
        await docs.update(doc.id, title="b")
    loaded = await docs.get(doc.id)
    assert (loaded.created_by, loaded.updated_by) == ("alice", "bob")
    with bind_context(principal=ALICE):
        explicit = await docs.add(Doc(title="c", created_by="importer"))
    assert explicit.created_by == "importer"


async def test_soft_deleted_rows_are_left_out_of_every_orm_query(
    docs: Repository[Doc], database: Database
) -> None:
    _kept, gone = await docs.add_many([Doc(title="kept"), Doc(title="gone")])
    await docs.delete(gone.id)
    async with database.session() as session:
        assert [d.title for d in (await session.scalars(select(Doc))).all()] == ["kept"]
        assert await session.scalar(select(func.count(Doc.id))) == 1
        assert await session.get(Doc, gone.id) is None
        shown = select(Doc).order_by(Doc.title).execution_options(include_deleted=True)
        assert [d.title for d in (await session.scalars(shown)).all()] == ["gone", "kept"]
        # ORM UPDATE statements skip them too.
        result = await session.execute(update(Doc).values(title="renamed"))
        assert result.rowcount == 1  # type: ignore[attr-defined]
    assert (await docs.get(gone.id, include_deleted=True)).title == "gone"


async def test_instance_restore_and_mark_deleted_are_saved_at_the_next_flush(
    docs: Repository[Doc], database: Database
) -> None:
    doc = await docs.add(Doc(title="a"))
    async with database.transaction() as unit:
        loaded = await unit.session.get(Doc, doc.id)
        assert loaded is not None
        loaded.mark_deleted()
    assert await docs.get_or_none(doc.id) is None
    async with database.transaction() as unit:
        again = await unit.session.get(Doc, doc.id, execution_options={"include_deleted": True})
        assert again is not None
        assert again.is_deleted
        again.restore()
    assert not (await docs.get(doc.id)).is_deleted


async def test_two_tasks_updating_the_same_versioned_row_exactly_one_wins(
    docs: Repository[Doc], database: Database
) -> None:
    doc = await docs.add(Doc(title="start"))
    both_have_read = asyncio.Barrier(2)

    async def write(title: str) -> str:
        async with database.transaction() as unit:
            mine = await unit.session.get(Doc, doc.id)
            assert mine is not None
            assert mine.version == 1
            await both_have_read.wait()
            mine.title = title
            await unit.flush()
        return title

    results = await asyncio.wait_for(
        asyncio.gather(write("first"), write("second"), return_exceptions=True), timeout=30
    )
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert len(losers) == 1, results
    assert isinstance(losers[0], ConflictError)
    assert losers[0].code in {"stale_version", "transaction_conflict"}  # the latter: SQLite write lock
    final = await docs.get(doc.id)
    assert (final.title, final.version) == (winners[0], 2)


async def test_saving_a_stale_instance_raises_conflict(docs: Repository[Doc], database: Database) -> None:
    doc = await docs.add(Doc(title="a"))
    doc_id = doc.id  # the rollback below expires the instance
    await docs.update(doc_id, title="b")  # someone else moves the row to version 2

    async def save_stale() -> None:
        async with database.transaction() as unit:
            unit.session.add(doc)  # still at version 1
            doc.title = "c"

    with pytest.raises(ConflictError) as caught:
        await save_stale()
    assert caught.value.code == "stale_version"
    assert (await docs.get(doc_id)).title == "b"


async def test_int_primary_keys_increase(database: Database, docs: Repository[Doc]) -> None:
    counters = Repository(database, Counter)
    first = await counters.add(Counter())
    second = await counters.add(Counter(value=3))
    assert isinstance(first.id, int)
    assert second.id > first.id
    assert (await counters.get(str(second.id))).value == 3


def test_base_names_constraints_by_the_convention() -> None:
    assert Base.metadata.naming_convention == NAMING_CONVENTION

    class Convention(DeclarativeBase):
        metadata = MetaData(naming_convention=Base.metadata.naming_convention)

    class Owner(IntPrimaryKey, Convention):
        __tablename__ = "owners"

    class Pet(IntPrimaryKey, Convention):
        __tablename__ = "pets"
        __table_args__ = (CheckConstraint("legs >= 0", name="legs_positive"),)
        owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
        tag: Mapped[str] = mapped_column(String(10), unique=True)
        legs: Mapped[int]

    ddl = str(CreateTable(Pet.__table__))
    for name in ("pk_pets", "uq_pets_tag", "ck_pets_legs_positive", "fk_pets_owner_id_owners"):
        assert f"CONSTRAINT {name}" in ddl
    assert {i.name for i in Pet.__table__.indexes} == {"ix_pets_owner_id"}
