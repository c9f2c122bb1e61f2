"""QueryCache on SQLite and PostgreSQL: keys, modes, and invalidation after committed writes."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mainspring.cache import MemoryCache
from mainspring.cache.query import CacheMissError, QueryCache, QueryCacheMode
from mainspring.db import Database
from mainspring.errors import ValidationError

metadata = MetaData()
users = Table(
    "qc_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(100), nullable=False),
)
orders = Table(
    "qc_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("qc_users.id"), nullable=False),
    Column("total", Integer, nullable=False),
)


class Base(DeclarativeBase):
    metadata = metadata


class Note(Base):
    __tablename__ = "qc_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


class Env:
    def __init__(self, db: Database, cache: MemoryCache, qc: QueryCache) -> None:
        self.db, self.cache, self.qc = db, cache, qc
        self.selects = 0

    async def sneak(self, sql: str) -> None:
        """Change rows behind the query cache's back (text() DML is not tracked)."""
        async with self.db.transaction() as unit:
            await unit.session.execute(text(sql))


@pytest.fixture(params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'qc.db'}"
    else:
        url = request.getfixturevalue("postgres_url").sqlalchemy_url
    async with Database(url) as db:
        await db.create_all(metadata)
        async with db.transaction() as unit:
            await unit.session.execute(insert(users), [{"id": 1, "email": "a@x"}, {"id": 2, "email": "b@x"}])
            await unit.session.execute(insert(orders), [{"id": 1, "user_id": 1, "total": 10}])
        cache = MemoryCache()
        async with QueryCache(db, cache, ttl=60) as qc:
            made = Env(db, cache, qc)

            def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if statement.lstrip().upper().startswith("SELECT"):
                    made.selects += 1

            event.listen(db.engine.sync_engine, "before_cursor_execute", count)
            yield made
            event.remove(db.engine.sync_engine, "before_cursor_execute", count)


def by_id(user_id: int) -> Any:
    return select(users.c.id, users.c.email).where(users.c.id == user_id)


async def test_results_are_lists_of_dicts_and_a_second_fetch_is_served_from_the_cache(env: Env) -> None:
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "a@x"}]
    await env.sneak("UPDATE qc_users SET email = 'sneaky' WHERE id = 1")
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "a@x"}]
    assert env.selects == 1


async def test_concurrent_misses_run_the_query_once(env: Env) -> None:
    results = await asyncio.gather(*(env.qc.fetch(by_id(2)) for _ in range(20)))
    assert results == [[{"id": 2, "email": "b@x"}]] * 20
    assert env.selects == 1


async def test_a_committed_core_update_makes_the_cached_result_stale(env: Env) -> None:
    await env.qc.fetch(by_id(1))
    async with env.db.transaction() as unit:
        await unit.session.execute(update(users).where(users.c.id == 1).values(email="new@x"))
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "new@x"}]


async def test_a_committed_orm_flush_makes_results_on_its_table_stale(env: Env) -> None:
    notes = select(Note.id, Note.body)
    assert await env.qc.fetch(notes) == []
    async with env.db.transaction() as unit:
        unit.session.add(Note(id=1, body="hello"))
    assert await env.qc.fetch(notes) == [{"id": 1, "body": "hello"}]


async def test_a_write_to_one_table_keeps_results_of_other_tables(env: Env) -> None:
    await env.qc.fetch(by_id(1))
    async with env.db.transaction() as unit:
        await unit.session.execute(insert(orders).values(id=2, user_id=2, total=5))
    await env.qc.fetch(by_id(1))
    assert env.selects == 1


async def test_a_join_is_stale_when_any_of_its_tables_changes(env: Env) -> None:
    joined = select(users.c.email, orders.c.total).join_from(users, orders).order_by(orders.c.id)
    assert await env.qc.fetch(joined) == [{"email": "a@x", "total": 10}]
    async with env.db.transaction() as unit:
        await unit.session.execute(update(orders).values(total=11))
    assert await env.qc.fetch(joined) == [{"email": "a@x", "total": 11}]


async def test_a_write_in_a_savepoint_invalidates_only_when_the_outer_transaction_commits(env: Env) -> None:
    await env.qc.fetch(by_id(1))

    async def elsewhere() -> Any:
        # A task outside the unit of work (an empty context), as another request would be.
        task = asyncio.create_task(
            env.qc.fetch(by_id(1), mode=QueryCacheMode.CACHE_ONLY), context=contextvars.Context()
        )
        return await task

    async with env.db.transaction() as outer:
        async with env.db.transaction() as inner:
            await inner.session.execute(update(users).where(users.c.id == 1).values(email="sp@x"))
        await outer.flush()
        assert await elsewhere() == [{"id": 1, "email": "a@x"}]
    with pytest.raises(CacheMissError):
        await elsewhere()
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "sp@x"}]


async def test_a_rolled_back_write_invalidates_nothing(env: Env) -> None:
    await env.qc.fetch(by_id(1))

    async def write_then_fail() -> None:
        async with env.db.transaction() as unit:
            await unit.session.execute(update(users).values(email="never"))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    assert await env.qc.fetch(by_id(1), mode=QueryCacheMode.CACHE_ONLY) == [{"id": 1, "email": "a@x"}]


async def test_inside_a_transaction_fetch_sees_its_own_writes_and_caches_nothing(env: Env) -> None:
    async with env.db.transaction() as unit:
        await unit.session.execute(update(users).where(users.c.id == 1).values(email="mine"))
        assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "mine"}]
    with pytest.raises(CacheMissError):
        await env.qc.fetch(by_id(1), mode=QueryCacheMode.CACHE_ONLY)


async def test_cache_only_raises_on_a_miss_and_never_queries(env: Env) -> None:
    with pytest.raises(CacheMissError, match="CACHE_FIRST") as info:
        await env.qc.fetch(by_id(1), mode=QueryCacheMode.CACHE_ONLY)
    assert info.value.http_status == 404
    assert env.selects == 0


async def test_cache_only_returns_a_cached_empty_result(env: Env) -> None:
    assert await env.qc.fetch(by_id(99)) == []
    assert await env.qc.fetch(by_id(99), mode=QueryCacheMode.CACHE_ONLY) == []


async def test_db_first_always_queries_and_refreshes_the_cache(env: Env) -> None:
    await env.qc.fetch(by_id(1))
    await env.sneak("UPDATE qc_users SET email = 'sneaky' WHERE id = 1")
    assert await env.qc.fetch(by_id(1), mode=QueryCacheMode.DB_FIRST) == [{"id": 1, "email": "sneaky"}]
    assert await env.qc.fetch(by_id(1), mode=QueryCacheMode.CACHE_ONLY) == [{"id": 1, "email": "sneaky"}]


async def test_keys_hold_the_dialects_sql_without_values_and_differ_by_values(env: Env) -> None:
    one, two = env.qc.key(by_id(1)), env.qc.key(by_id(2))
    assert one != two
    assert one == env.qc.key(by_id(1))
    assert one.startswith("qc:qc_users:")
    assert len(one.rsplit(":", 1)[1]) == 64
    statement = select(users).where(users.c.email == text(":e").bindparams(e="x"))
    assert env.qc.key(statement, {"e": "a@x"}) != env.qc.key(statement, {"e": "b@x"})


async def test_invalidate_query_table_and_pattern(env: Env) -> None:
    await env.qc.fetch(by_id(1))
    await env.sneak("UPDATE qc_users SET email = 'sneaky' WHERE id = 1")
    assert await env.qc.invalidate_query(by_id(1)) is True
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "sneaky"}]

    await env.sneak("UPDATE qc_users SET email = 'again' WHERE id = 1")
    await env.qc.invalidate_table(users)
    assert await env.qc.fetch(by_id(1)) == [{"id": 1, "email": "again"}]

    await env.qc.fetch(by_id(2), name="user-2")
    assert await env.qc.invalidate_pattern("user-") == 1
    with pytest.raises(CacheMissError):
        await env.qc.fetch(by_id(2), mode=QueryCacheMode.CACHE_ONLY, name="user-2")


async def test_a_text_query_needs_its_tables_and_is_then_invalidated_by_writes(env: Env) -> None:
    query = text("SELECT email FROM qc_users WHERE id = :id")
    with pytest.raises(ValidationError, match="tables="):
        await env.qc.fetch(query, {"id": 1})
    assert await env.qc.fetch(query, {"id": 1}, tables=["qc_users"]) == [{"email": "a@x"}]
    async with env.db.transaction() as unit:
        await unit.session.execute(update(users).where(users.c.id == 1).values(email="t@x"))
    assert await env.qc.fetch(query, {"id": 1}, tables=["qc_users"]) == [{"email": "t@x"}]


async def test_a_bad_prefix_is_refused(env: Env) -> None:
    with pytest.raises(ValidationError, match="must end with ':'"):
        QueryCache(env.db, env.cache, prefix="qc")
