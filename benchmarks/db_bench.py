"""Data layer cost: ``Repository`` against hand-written SQLAlchemy ORM code and SQLAlchemy Core.

Four operations on one table (a UUIDv7 key, ``created_at``/``updated_at``, three data columns), on
SQLite (a file in a temporary directory) and PostgreSQL (a database created for the run and dropped
after it), in one run:

1. get by id: ``repo.get(id)`` / ``session.get(Model, id)`` in a new session / ``SELECT ... WHERE id``
   on a connection from the pool;
2. list 50 rows: ``repo.list(limit=50)`` / ``select(Model).order_by(Model.id).limit(50)`` / the same
   on the table;
3. insert one: ``repo.add(Model(...))`` / ``session.add`` in ``sessionmaker.begin()`` / Core
   ``insert().values(...)`` in ``engine.begin()``;
4. bulk insert 1,000 rows: ``repo.add_many(instances)`` / ``session.add_all(instances)`` and
   ``session.execute(insert(Model), dicts)`` / Core ``execute(insert(table), dicts)``.

Every variant uses the same started :class:`~mainspring.db.Database` (same engine, pool and session
factory), and each operation is its own transaction, as in a request handler. Rounds alternate the
variants; the table shows the median time per operation and the ratios. Goal (issue 4): Repository
within 1.3x of the ORM code. Usage: ``python benchmarks/db_bench.py [--rounds 30] [--scale 1.0]``;
PostgreSQL comes from ``MAINSPRING_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1/test``)
and is left out, with a note, when it does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import MetaData, String, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mainspring.db import NAMING_CONVENTION, Database, Repository, Timestamps, UUIDPrimaryKey
from mainspring.testing._isolation import isolated_postgres
from mainspring.testing._services import configured_url, probe


class BenchBase(DeclarativeBase):
    """A base of its own, so the run creates only the table it measures."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Item(UUIDPrimaryKey, Timestamps, BenchBase):
    """The measured model."""

    __tablename__ = "bench_items"
    name: Mapped[str] = mapped_column(String(100))
    sku: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int]


class ItemRepository(Repository[Item]):
    """The repository under test (nothing added)."""


TABLE = Item.__table__
Op = Callable[[], Awaitable[Any]]


def _values(i: int) -> dict[str, Any]:
    return {"name": f"item {i}", "sku": f"SKU-{i:06d}", "qty": i % 97}


def variants(db: Database, ids: list[uuid.UUID]) -> dict[str, dict[str, Op]]:
    """The operations, keyed by operation and then by variant."""
    repo = ItemRepository(db)
    sessions = db.session_factory
    engine = db.engine
    counter = iter(range(10**9))

    def next_id() -> uuid.UUID:
        return ids[next(counter) % len(ids)]

    async def repo_get() -> Any:
        return await repo.get(next_id())

    async def orm_get() -> Any:
        async with sessions() as session:
            return await session.get(Item, next_id())

    async def core_get() -> Any:
        async with engine.connect() as conn:
            return (await conn.execute(select(TABLE).where(TABLE.c.id == next_id()))).first()

    async def repo_list() -> Any:
        return await repo.list(limit=50)

    async def orm_list() -> Any:
        async with sessions() as session:
            return (await session.scalars(select(Item).order_by(Item.id).limit(50))).all()

    async def core_list() -> Any:
        async with engine.connect() as conn:
            return (await conn.execute(select(TABLE).order_by(TABLE.c.id).limit(50))).all()

    async def repo_add() -> Any:
        return await repo.add(Item(**_values(next(counter))))

    async def orm_add() -> Any:
        async with sessions.begin() as session:
            session.add(Item(**_values(next(counter))))

    async def core_add() -> Any:
        async with engine.begin() as conn:
            await conn.execute(insert(TABLE).values(**_values(next(counter))))

    async def repo_bulk() -> Any:
        return await repo.add_many([Item(**_values(i)) for i in range(1000)])

    async def orm_bulk() -> Any:
        async with sessions.begin() as session:
            session.add_all([Item(**_values(i)) for i in range(1000)])

    async def orm_bulk_dicts() -> Any:
        async with sessions.begin() as session:
            await session.execute(insert(Item), [_values(i) for i in range(1000)])

    async def core_bulk() -> Any:
        async with engine.begin() as conn:
            await conn.execute(insert(TABLE), [_values(i) for i in range(1000)])

    return {
        "get by id": {"repository": repo_get, "orm": orm_get, "core": core_get},
        "list 50 rows": {"repository": repo_list, "orm": orm_list, "core": core_list},
        "insert one": {"repository": repo_add, "orm": orm_add, "core": core_add},
        "bulk insert 1,000": {
            "repository": repo_bulk,
            "orm": orm_bulk,
            "orm (insert + dicts)": orm_bulk_dicts,
            "core": core_bulk,
        },
    }


#: Operations per timed batch, before ``--scale``. Batches are short and the variants take turns (in a
#: rotating order) so that load from elsewhere on the machine hits all of them alike.
BATCH = {"get by id": 50, "list 50 rows": 25, "insert one": 40, "bulk insert 1,000": 1}


async def measure(url: str, rounds: int, scale: float) -> dict[str, dict[str, float]]:
    """Return the median seconds per operation, by operation and variant, on ``url``."""
    async with Database(url, pool_size=5) as db:
        await db.create_all(BenchBase.metadata)
        seeded = [Item(**_values(i)) for i in range(2000)]
        await ItemRepository(db).add_many(seeded)
        ops = variants(db, [item.id for item in seeded])
        samples: dict[str, dict[str, list[float]]] = {op: {v: [] for v in vs} for op, vs in ops.items()}
        for round_no in range(rounds + 1):  # round 0 warms caches and the pool, and is not counted
            for op, vs in ops.items():
                count = max(1, round(BATCH[op] * scale))
                names = list(vs)
                shift = round_no % len(names)
                for variant in names[shift:] + names[:shift]:
                    fn = vs[variant]
                    started = time.perf_counter()
                    for _ in range(count):
                        await fn()
                    if round_no:
                        samples[op][variant].append((time.perf_counter() - started) / count)
        await db.drop_all(BenchBase.metadata)
    return {op: {v: statistics.median(s) for v, s in vs.items()} for op, vs in samples.items()}


def _fmt(seconds: float) -> str:
    micros = seconds * 1e6
    return f"{micros / 1000:,.1f} ms" if micros >= 10_000 else f"{micros:,.0f} µs"


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Render the results as a markdown table."""
    lines = [
        "| operation | backend | Repository | ORM | Core | Repository / ORM | Repository / Core |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for op in BATCH:
        for backend, by_op in results.items():
            row = by_op[op]
            repo, orm, core = row["repository"], row["orm"], row["core"]
            lines.append(
                f"| {op} | {backend} | {_fmt(repo)} | {_fmt(orm)} | {_fmt(core)} | "
                f"{repo / orm:.2f}x | {repo / core:.2f}x |"
            )
            if "orm (insert + dicts)" in row:
                dicts = row["orm (insert + dicts)"]
                lines.append(
                    f"| {op}, ORM `insert(Model)` + dicts | {backend} | | {_fmt(dicts)} | | "
                    f"{repo / dicts:.2f}x | |"
                )
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the operations per round")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        results["SQLite"] = asyncio.run(measure(url, args.rounds, args.scale))
    pg_url = configured_url("postgres")
    problem = probe("postgres", pg_url)
    if problem is None:
        with isolated_postgres(pg_url) as isolated:
            results["PostgreSQL"] = asyncio.run(measure(isolated.sqlalchemy_url, args.rounds, args.scale))
    else:
        print(f"PostgreSQL left out: {problem}", file=sys.stderr)
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{args.rounds} rounds, medians per operation\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
