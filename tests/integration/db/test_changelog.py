"""The change log of audited models on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
import decimal
import enum

import pytest
from sqlalchemy import Enum, MetaData, Numeric, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mainspring.context import Principal, bind_context
from mainspring.db import (
    NAMING_CONVENTION,
    ChangeAction,
    ChangeLog,
    Database,
    IntPrimaryKey,
    Repository,
    SoftDelete,
    Timestamps,
    UUIDPrimaryKey,
    Versioned,
    secret_column,
)


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tier(enum.Enum):
    FREE = "free"
    GOLD = "gold"


class Account(UUIDPrimaryKey, Timestamps, SoftDelete, Versioned, Model):
    __tablename__ = "cl_accounts"
    __audited__ = True

    email: Mapped[str] = mapped_column(String(100), unique=True)
    balance: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2), default=decimal.Decimal("0"))
    tier: Mapped[Tier] = mapped_column(Enum(Tier), default=Tier.FREE)
    password_hash: Mapped[str | None] = secret_column(String(200), default=None)


class Plain(IntPrimaryKey, Model):
    __tablename__ = "cl_plain"

    name: Mapped[str] = mapped_column(String(20))


@pytest.fixture
async def accounts(database: Database) -> Repository[Account]:
    await database.create_all(Model.metadata)
    await database.create_all(ChangeLog.metadata)  # the library's change_log table
    return Repository(database, Account)


async def log_rows(database: Database) -> list[ChangeLog]:
    async with database.session() as session:
        return list((await session.scalars(select(ChangeLog).order_by(ChangeLog.id))).all())


ALICE = Principal(id="alice")


async def test_insert_update_and_delete_each_write_a_row_with_actor_and_correlation_id(
    accounts: Repository[Account], database: Database
) -> None:
    started = dt.datetime.now(dt.UTC)
    with bind_context(principal=ALICE, correlation_id="corr-42"):
        account = await accounts.add(Account(email="a@example.com", password_hash="secret-hash"))
        await accounts.update(
            account.id, email="b@example.com", balance=decimal.Decimal("12.50"), tier=Tier.GOLD
        )
        await accounts.delete(account.id, hard=True)
    rows = await log_rows(database)
    assert [r.action for r in rows] == ["insert", "update", "delete"]
    for row in rows:
        assert (row.entity, row.entity_id) == ("cl_accounts", str(account.id))
        assert (row.actor, row.correlation_id) == ("alice", "corr-42")
        assert row.at.tzinfo is dt.UTC
        assert row.at >= started - dt.timedelta(seconds=1)
        assert "password_hash" not in row.changes  # secret columns never reach the log
    inserted, updated, deleted = (r.changes for r in rows)
    assert inserted["email"] == [None, "a@example.com"]
    assert inserted["id"] == [None, str(account.id)]
    assert updated == {
        "email": ["a@example.com", "b@example.com"],
        "balance": ["0.00", "12.50"],
        "tier": ["free", "gold"],
    }
    assert deleted["email"] == ["b@example.com", None]


async def test_soft_delete_and_restore_are_logged_as_such(
    accounts: Repository[Account], database: Database
) -> None:
    account = await accounts.add(Account(email="a@example.com"))
    await accounts.delete(account.id)
    await accounts.restore(account.id)
    rows = await log_rows(database)
    assert [r.action for r in rows] == [ChangeAction.INSERT, ChangeAction.SOFT_DELETE, ChangeAction.RESTORE]
    assert rows[1].changes["deleted_at"][0] is None
    assert rows[1].changes["deleted_at"][1] is not None
    assert rows[2].changes["deleted_at"][1] is None
    assert all(r.actor is None and r.correlation_id is None for r in rows)  # nothing bound


async def test_a_rolled_back_change_leaves_no_log_row(
    accounts: Repository[Account], database: Database
) -> None:
    async def add_then_fail() -> None:
        async with database.transaction():
            await accounts.add(Account(email="a@example.com"))
            assert len(await log_rows(database)) == 1  # written in the same transaction ...
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await add_then_fail()
    assert await log_rows(database) == []  # ... and rolled back with it


async def test_bulk_adds_and_upserts_are_logged_per_row(
    accounts: Repository[Account], database: Database
) -> None:
    added = await accounts.add_many([Account(email=f"{i}@example.com") for i in range(3)])
    await accounts.upsert(
        [{"email": "1@example.com", "tier": Tier.GOLD}, {"email": "new@example.com"}], conflict=["email"]
    )
    rows = await log_rows(database)
    assert [r.action for r in rows[:3]] == ["insert"] * 3
    assert {r.entity_id for r in rows[:3]} == {str(a.id) for a in added}
    upserts = {r.action: r for r in rows[3:]}
    assert set(upserts) == {"update", "insert"}
    assert upserts["update"].entity_id == str(added[1].id)
    assert upserts["update"].changes == {"tier": ["free", "gold"]}
    assert upserts["insert"].changes["email"] == [None, "new@example.com"]


async def test_changes_made_directly_in_a_unit_of_work_are_logged(
    accounts: Repository[Account], database: Database
) -> None:
    async with database.transaction() as unit:
        account = Account(email="a@example.com")
        unit.session.add(account)
        await unit.flush()
        account.balance = decimal.Decimal("3.00")
        account.password_hash = "changed"
    rows = await log_rows(database)
    assert [r.action for r in rows] == ["insert", "update"]
    assert rows[1].changes == {"balance": ["0", "3.00"]}


async def test_a_model_without_audited_writes_no_log(
    accounts: Repository[Account], database: Database
) -> None:
    plain = Repository(database, Plain)
    row = await plain.add(Plain(name="x"))
    await plain.update(row.id, name="y")
    await plain.add_many([Plain(name="z")])
    await plain.delete(row.id)
    assert await log_rows(database) == []
