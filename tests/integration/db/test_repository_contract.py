"""The Repository contract, run against SQLite, PostgreSQL and MariaDB (the ``database`` fixture)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, UniqueConstraint, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mainspring.db import (
    NAMING_CONVENTION,
    Database,
    IntPrimaryKey,
    Repository,
    SoftDelete,
    Timestamps,
    UUIDPrimaryKey,
    Versioned,
)
from mainspring.db._bulk import bulk_insert
from mainspring.db._repository import ModelT
from mainspring.errors import BadRequestError, ConflictError, NotFoundError, ValidationError


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Product(UUIDPrimaryKey, Timestamps, SoftDelete, Versioned, Model):
    __tablename__ = "rc_products"

    sku: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    qty: Mapped[int] = mapped_column(default=0)
    category: Mapped[str | None] = mapped_column(String(20), default=None)


class Tag(IntPrimaryKey, Model):
    __tablename__ = "rc_tags"
    __table_args__ = (UniqueConstraint("namespace", "label"),)

    namespace: Mapped[str] = mapped_column(String(20))
    label: Mapped[str] = mapped_column(String(40))
    uses: Mapped[int] = mapped_column(default=0)


class Review(IntPrimaryKey, Model):
    __tablename__ = "rc_reviews"

    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rc_products.id"))
    stars: Mapped[int]
    product: Mapped[Product] = relationship(lazy="raise")


class TagLink(Model):
    __tablename__ = "rc_tag_links"

    tag_id: Mapped[int] = mapped_column(ForeignKey("rc_tags.id"), primary_key=True)
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rc_products.id"), primary_key=True)


class ProductRepository(Repository[Product]):
    async def in_category(self, category: str) -> list[Product]:
        return await self.scalars(self.select(Product.category == category).order_by(Product.sku))


@pytest.fixture
async def products(database: Database) -> ProductRepository:
    await database.create_all(Model.metadata)
    return ProductRepository(database)


@pytest.fixture
def tags(database: Database, products: ProductRepository) -> Repository[Tag]:
    return Repository(database, Tag)


def product(i: int, **values: Any) -> Product:
    fields: dict[str, Any] = {"sku": f"sku-{i:04d}", "name": f"product {i}", "qty": i % 7}
    fields.update(values)
    return Product(**fields)


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    """Collect the SQL statements sent to ``database`` (one entry per execute or executemany)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- reads -------------------------------------------------------------------------------------------


async def test_add_then_get_returns_the_row(products: ProductRepository) -> None:
    added = await products.add(product(1))
    assert added.id.version == 7
    loaded = await products.get(added.id)
    assert (loaded.sku, loaded.name, loaded.qty, loaded.version) == ("sku-0001", "product 1", 1, 1)
    assert loaded.created_at == added.created_at
    assert await products.get(str(added.id)) is not None  # the text form of the id works too


async def test_get_of_a_missing_id_raises_not_found_and_get_or_none_returns_none(
    products: ProductRepository,
) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError) as caught:
        await products.get(missing)
    assert str(missing) in caught.value.message
    assert caught.value.details == {"entity": "Product", "id": str(missing)}
    assert await products.get_or_none(missing) is None


@pytest.mark.parametrize("bad", ["not-a-uuid", "", 12.5])
async def test_get_with_a_malformed_id_raises_validation_error(products: ProductRepository, bad: Any) -> None:
    with pytest.raises(ValidationError, match="not a valid Product id"):
        await products.get(bad)


async def test_get_many_returns_rows_in_the_order_asked_and_skips_missing(
    products: ProductRepository,
) -> None:
    a, b, c = await products.add_many([product(1), product(2), product(3)])
    found = await products.get_many([c.id, uuid.uuid4(), a.id, c.id, str(b.id)])
    assert [p.sku for p in found] == ["sku-0003", "sku-0001", "sku-0002"]
    assert await products.get_many([]) == []


async def test_list_filters_sorts_limits_and_offsets(products: ProductRepository) -> None:
    await products.add_many(
        [product(i, category=("tools" if i % 2 else None), qty=i % 3) for i in range(1, 11)]
    )
    assert [p.sku for p in await products.list(filters={"category": "tools"}, limit=2)] == [
        "sku-0001",
        "sku-0003",
    ]
    assert len(await products.list(filters={"category": None})) == 5
    assert len(await products.list(filters={"qty": [0, 2]})) == 6
    assert await products.list(filters={"qty": []}) == []
    by_qty = await products.list(order_by=["-qty", "sku"], limit=4)
    assert [(p.qty, p.sku) for p in by_qty] == [
        (2, "sku-0002"),
        (2, "sku-0005"),
        (2, "sku-0008"),
        (1, "sku-0001"),
    ]
    assert [p.sku for p in await products.list(Product.qty == 1, order_by=Product.sku.desc(), offset=1)] == [
        "sku-0007",
        "sku-0004",
        "sku-0001",
    ]
    assert [p.sku for p in await products.in_category("tools")][:2] == ["sku-0001", "sku-0003"]


async def test_list_with_an_unknown_field_raises_validation_error_naming_the_fields(
    products: ProductRepository,
) -> None:
    with pytest.raises(ValidationError, match=r"cannot filter by 'price'.*sku"):
        await products.list(filters={"price": 3})
    with pytest.raises(ValidationError, match="cannot sort by '-price'"):
        await products.list(order_by="-price")
    with pytest.raises(ValidationError, match="limit and offset must be >= 0"):
        await products.list(limit=-1)


async def test_count_and_exists_honour_where_and_filters(products: ProductRepository) -> None:
    await products.add_many([product(i, category="a" if i < 3 else "b") for i in range(5)])
    assert await products.count() == 5
    assert await products.count(filters={"category": "a"}) == 3
    assert await products.count(Product.qty > 100) == 0
    assert await products.exists(filters={"sku": "sku-0004"})
    assert not await products.exists(Product.sku == "nope")


# --- keyset pages --------------------------------------------------------------------------------------


async def test_pages_walk_every_row_exactly_once_in_order(products: ProductRepository) -> None:
    await products.add_many([product(i, qty=i % 4) for i in range(23)])
    expected = [p.id for p in await products.list()]
    for order in (None, ["-qty", "name"], ["qty", "-created_at"]):
        seen: list[Any] = []
        after = None
        pages = 0
        while True:
            page = await products.page(after=after, limit=5, order_by=order)
            seen.extend(p.id for p in page.items)
            pages += 1
            if page.next_cursor is None:
                break
            assert page.has_more
            after = page.next_cursor
        assert pages == 5
        assert sorted(seen) == sorted(expected)
        assert len(seen) == len(set(seen))
        if order is None:
            assert seen == expected
        else:
            assert seen == [p.id for p in await products.list(order_by=order)]


async def test_a_page_skips_soft_deleted_rows_and_an_exact_fit_has_no_next_cursor(
    products: ProductRepository,
) -> None:
    rows = await products.add_many([product(i) for i in range(4)])
    await products.delete(rows[1].id)
    page = await products.page(limit=3)
    assert [p.sku for p in page.items] == ["sku-0000", "sku-0002", "sku-0003"]
    assert page.next_cursor is None
    assert len((await products.page(limit=3, include_deleted=True)).items) == 3


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "eyJvIjoiaWQiLCJrIjpbXX0",  # {"o":"id","k":[]}: wrong number of values
        "eyJvIjoiaWQiLCJrIjpbIm5vdC1hLXV1aWQiXX0",  # {"o":"id","k":["not-a-uuid"]}
        "W10",  # []
        "x" * 5000,
    ],
)
async def test_a_malformed_cursor_raises_bad_request(products: ProductRepository, cursor: str) -> None:
    with pytest.raises(BadRequestError, match="invalid page cursor") as caught:
        await products.page(after=cursor)
    assert caught.value.code == "invalid_cursor"


async def test_a_cursor_of_another_sort_order_raises_bad_request(products: ProductRepository) -> None:
    await products.add_many([product(i) for i in range(3)])
    first = await products.page(limit=1, order_by="-name")
    assert first.next_cursor is not None
    with pytest.raises(BadRequestError, match="different sort order"):
        await products.page(after=first.next_cursor, order_by="name")


async def test_page_refuses_bad_limits_and_nullable_sort_fields(products: ProductRepository) -> None:
    for limit in (0, products.max_page_size + 1):
        with pytest.raises(ValidationError, match="limit must be between 1 and"):
            await products.page(limit=limit)
    with pytest.raises(ValidationError, match="cannot page by category"):
        await products.page(order_by="category")


# --- writes --------------------------------------------------------------------------------------------


async def test_add_many_sends_one_insert_statement_for_a_thousand_rows(
    products: ProductRepository, tags: Repository[Tag], database: Database, db_backend: str
) -> None:
    with statements(database) as sent:
        added = await products.add_many(product(i) for i in range(1000))
    assert sum(1 for s in sent if s.lstrip().upper().startswith("INSERT")) == 1
    assert len({p.id for p in added}) == 1000
    assert all(p.version == 1 and p.created_at is not None for p in added)
    assert await products.count() == 1000
    # Database-generated integer keys come back in order: in one statement where the dialect can
    # match RETURNING rows to parameters (PostgreSQL, MariaDB), one per row on SQLite (no network).
    with statements(database) as sent:
        labels = await tags.add_many(Tag(namespace="n", label=f"l{i}") for i in range(300))
    inserts = sum(1 for s in sent if s.lstrip().upper().startswith("INSERT"))
    assert inserts == (300 if db_backend == "sqlite" else 1)
    ids = [t.id for t in labels]
    assert ids == sorted(ids)
    assert len(set(ids)) == 300
    assert (await tags.get(ids[17])).label == "l17"


async def test_add_many_inserts_related_objects_through_the_unit_of_work(
    products: ProductRepository, database: Database
) -> None:
    reviews = Repository(database, Review)
    added = await reviews.add_many([Review(stars=s, product=product(s)) for s in range(1, 4)])
    assert [r.stars for r in added] == [1, 2, 3]
    assert await products.count() == 3
    assert (await reviews.get(added[0].id)).product_id == added[0].product_id


async def test_add_many_skips_the_unit_of_work_only_when_nothing_needs_it(
    products: ProductRepository, database: Database
) -> None:
    async with database.session() as session:
        assert await session.run_sync(bulk_insert, inspect(Product), [product(1)], False)
        assert await session.run_sync(bulk_insert, inspect(Tag), [Tag(namespace="n", label="l")], True)
        # Relationships set on an instance need the unit of work's cascade.
        related = Review(stars=5, product=product(2))
        assert not await session.run_sync(bulk_insert, inspect(Review), [related], True)
        # So does an instance that is already in a session.
        attached = product(3)
        session.add(attached)
        assert not await session.run_sync(bulk_insert, inspect(Product), [attached], True)
    assert await products.count() == 2  # product 1 by the bulk path, product 3 by the commit's flush


async def test_add_many_inside_a_transaction_keeps_the_instances_in_the_unit(
    products: ProductRepository, database: Database
) -> None:
    async with database.transaction() as unit:
        added = await products.add_many([product(1), product(2)])
        assert all(p in unit.session for p in added)
        added[0].name = "renamed"
    assert (await products.get(added[0].id)).name == "renamed"


async def test_adding_a_duplicate_unique_value_raises_conflict(products: ProductRepository) -> None:
    await products.add(product(1))
    with pytest.raises(ConflictError) as caught:
        await products.add(product(1))
    assert caught.value.code == "unique_violation"
    with pytest.raises(ConflictError):
        await products.add_many([product(5), product(5)])
    assert await products.count() == 1


async def test_update_sets_fields_bumps_version_and_updated_at(products: ProductRepository) -> None:
    added = await products.add(product(1))
    await asyncio.sleep(0.002)
    updated = await products.update(added.id, name="new name", qty=42)
    assert (updated.name, updated.qty, updated.version) == ("new name", 42, 2)
    assert updated.updated_at > added.created_at == updated.created_at
    reloaded = await products.get(added.id)
    assert (reloaded.name, reloaded.qty, reloaded.version) == ("new name", 42, 2)


async def test_update_refuses_unknown_fields_missing_rows_and_stale_versions(
    products: ProductRepository,
) -> None:
    added = await products.add(product(1))
    with pytest.raises(ValidationError, match="cannot update price"):
        await products.update(added.id, price=3)
    with pytest.raises(ValidationError, match="cannot update id"):
        await products.update(added.id, id=uuid.uuid4())
    with pytest.raises(NotFoundError):
        await products.update(uuid.uuid4(), name="x")
    assert (await products.update(added.id, name="b", version=1)).version == 2
    with pytest.raises(ConflictError, match="is at version 2, not 1") as caught:
        await products.update(added.id, name="c", version=1)
    assert caught.value.code == "stale_version"
    assert (await products.get(added.id)).name == "b"


async def test_delete_is_soft_for_soft_delete_models_and_restore_brings_the_row_back(
    products: ProductRepository,
) -> None:
    added = await products.add(product(1))
    await products.delete(added.id)
    assert await products.get_or_none(added.id) is None
    assert await products.count() == 0
    deleted = await products.get(added.id, include_deleted=True)
    assert deleted.is_deleted
    with pytest.raises(NotFoundError):
        await products.delete(added.id)  # already deleted
    restored = await products.restore(added.id)
    assert not restored.is_deleted
    assert (await products.get(added.id)).sku == "sku-0001"
    assert (await products.restore(added.id)).version == restored.version  # restoring twice changes nothing


async def test_hard_delete_removes_the_row_for_good(
    products: ProductRepository, tags: Repository[Tag]
) -> None:
    added = await products.add(product(1))
    await products.delete(added.id)
    await products.delete(added.id, hard=True)  # purges a soft-deleted row too
    assert await products.get_or_none(added.id, include_deleted=True) is None
    with pytest.raises(NotFoundError):
        await products.restore(added.id)
    tag = await tags.add(Tag(namespace="n", label="x"))
    await tags.delete(tag.id)  # no SoftDelete: a real delete
    assert await tags.count() == 0
    with pytest.raises(NotFoundError):
        await tags.delete(tag.id)
    with pytest.raises(TypeError, match="no SoftDelete"):
        await tags.restore(tag.id)


async def test_upsert_inserts_then_updates_the_same_row(products: ProductRepository) -> None:
    first = await products.upsert({"sku": "s-1", "name": "one", "qty": 1}, conflict=["sku"])
    assert (first.name, first.version) == ("one", 1)
    await asyncio.sleep(0.002)
    second = await products.upsert({"sku": "s-1", "name": "uno", "qty": 5}, conflict=["sku"], update=["name"])
    assert second.id == first.id
    assert (second.name, second.qty, second.version) == ("uno", 1, 2)
    assert second.created_at == first.created_at < second.updated_at
    assert await products.count() == 1


async def test_upsert_of_many_rows_returns_them_in_the_order_given(tags: Repository[Tag]) -> None:
    existing = await tags.add(Tag(namespace="n", label="b", uses=1))
    rows = [
        {"namespace": "n", "label": "c", "uses": 3},
        {"namespace": "n", "label": "b", "uses": 9},
        {"namespace": "m", "label": "b", "uses": 4},
    ]
    result = await tags.upsert(rows, conflict=["namespace", "label"])
    assert [(t.namespace, t.label, t.uses) for t in result] == [("n", "c", 3), ("n", "b", 9), ("m", "b", 4)]
    assert result[1].id == existing.id
    assert await tags.count() == 3
    assert await tags.upsert([], conflict=["namespace", "label"]) == []


async def test_upsert_refuses_conflict_columns_that_are_not_unique(tags: Repository[Tag]) -> None:
    with pytest.raises(ValidationError, match="not the primary key or a unique constraint"):
        await tags.upsert({"namespace": "n", "label": "x"}, conflict=["label"])
    with pytest.raises(ValidationError, match="unknown fields colour"):
        await tags.upsert({"namespace": "n", "label": "x", "colour": 1}, conflict=["namespace", "label"])
    with pytest.raises(ValidationError, match="needs a value for label"):
        await tags.upsert({"namespace": "n"}, conflict=["namespace", "label"])


# --- the ambient unit of work ------------------------------------------------------------------------


async def test_repository_writes_join_the_transaction_and_roll_back_with_it(
    products: ProductRepository, database: Database
) -> None:
    async def add_then_fail() -> None:
        async with database.transaction():
            await products.add(product(1))
            await products.add_many([product(2), product(3)])
            assert await products.count() == 3  # visible inside the unit
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await add_then_fail()
    assert await products.count() == 0

    async def add_in_savepoint_then_fail() -> None:
        async with database.transaction():  # a SAVEPOINT: only this part rolls back
            await products.add(product(5))
            raise RuntimeError("inner")

    async with database.transaction() as unit:
        kept = await unit.repository(ProductRepository).add(product(4))
        with pytest.raises(RuntimeError):
            await add_in_savepoint_then_fail()
    assert [p.id for p in await products.list()] == [kept.id]


async def test_a_constraint_violation_in_a_savepoint_rolls_back_only_the_savepoint(
    products: ProductRepository, database: Database
) -> None:
    async def add_duplicate_in_savepoint() -> None:
        async with database.transaction():
            await products.add(product(5))
            await products.add(product(4))

    async with database.transaction():
        kept = await products.add(product(4))
        with pytest.raises(ConflictError):
            await add_duplicate_in_savepoint()
    assert [p.id for p in await products.list()] == [kept.id]


async def test_a_repository_needs_a_model_with_a_single_column_key(database: Database) -> None:
    class Untyped(Repository):  # type: ignore[type-arg]
        pass

    with pytest.raises(TypeError, match="has no model"):
        Untyped(database)
    assert ProductRepository.model is Product

    class Shared(Repository[ModelT]):
        pass

    class Tags(Shared[Tag]):
        pass

    assert Tags.model is Tag
    assert Tags(database).model is Tag
    with pytest.raises(TypeError, match="single-column primary key"):
        Repository(database, TagLink)
    assert "ProductRepository of Product" in repr(ProductRepository(database))


async def test_soft_deleted_rows_stay_hidden_from_select_helpers(products: ProductRepository) -> None:
    rows = await products.add_many([product(1, category="x"), product(2, category="x")])
    await products.delete(rows[0].id)
    assert [p.sku for p in await products.in_category("x")] == ["sku-0002"]
    shown = await products.scalars(products.select(Product.category == "x", include_deleted=True))
    assert len(shown) == 2
    assert [p.sku for p in await products.get_many([r.id for r in rows])] == ["sku-0002"]
    async with products.database.session() as session:
        assert len((await session.scalars(select(Product))).all()) == 1
