"""Keyset page cursors: round trips, and any malformed input is a BadRequestError, nothing else."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Enum, MetaData, Numeric, String, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mainspring.db import Timestamps, UTCDateTime, UUIDPrimaryKey
from mainspring.db._paging import decode_cursor, encode_cursor, parse_order_by
from mainspring.errors import BadRequestError, ValidationError


class Colour(enum.Enum):
    RED = "r"
    BLUE = "b"


class Model(DeclarativeBase):
    metadata = MetaData()


class Thing(UUIDPrimaryKey, Timestamps, Model):
    __tablename__ = "cursor_things"

    name: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int]
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(8, 2))
    colour: Mapped[Colour] = mapped_column(Enum(Colour))
    seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


MAPPER = inspect(Thing)
ORDER = ["-rank", "name", "price", "colour", "created_at"]
KEYS = parse_order_by(MAPPER, ORDER, pk_key="id")


def encode(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


@given(
    rank=st.integers(min_value=-(2**62), max_value=2**62),
    name=st.text(max_size=20),
    price=st.decimals(min_value=-999_999, max_value=999_999, places=2, allow_nan=False),
    colour=st.sampled_from(Colour),
    created_at=st.datetimes(timezones=st.just(dt.UTC)),
    key=st.uuids(),
)
def test_a_cursor_round_trips_every_sort_value(
    rank: int, name: str, price: decimal.Decimal, colour: Colour, created_at: dt.datetime, key: uuid.UUID
) -> None:
    row = Thing(id=key, rank=rank, name=name, price=price, colour=colour, created_at=created_at)
    cursor = encode_cursor(KEYS, row)
    assert cursor.isascii()
    assert "=" not in cursor
    assert decode_cursor(KEYS, cursor) == [rank, name, price, colour, created_at, key]


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_bad_request_never_a_crash(text: str) -> None:
    with pytest.raises(BadRequestError):
        decode_cursor(KEYS, text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)


@given(JSON)
def test_arbitrary_json_is_a_bad_request_never_a_crash(document: object) -> None:
    with pytest.raises(BadRequestError):
        decode_cursor(KEYS, encode({"o": "-rank,name,price,colour,created_at,id", "k": document}))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([1, "a", "1.00", "RED", "2030-01-01T00:00:00", str(uuid.UUID(int=1))], "bad value for created_at"),
        (
            [True, "a", "1.00", "RED", "2030-01-01T00:00:00+00:00", str(uuid.UUID(int=1))],
            "bad value for rank",
        ),
        (
            [2**70, "a", "1.00", "RED", "2030-01-01T00:00:00+00:00", str(uuid.UUID(int=1))],
            "bad value for rank",
        ),
        (
            [1, "a", "1.00", "GREEN", "2030-01-01T00:00:00+00:00", str(uuid.UUID(int=1))],
            "bad value for colour",
        ),
        ([1, "a", "x", "RED", "2030-01-01T00:00:00+00:00", str(uuid.UUID(int=1))], "bad value for price"),
        ([1, None, "1.00", "RED", "2030-01-01T00:00:00+00:00", str(uuid.UUID(int=1))], "name cannot be null"),
        ([1, "a", "1.00", "RED", "2030-01-01T00:00:00+00:00"], "wrong number of sort values"),
    ],
)
def test_wrong_values_are_named_in_the_error(values: list[object], reason: str) -> None:
    cursor = encode({"o": "-rank,name,price,colour,created_at,id", "k": values})
    with pytest.raises(BadRequestError, match=reason):
        decode_cursor(KEYS, cursor)


def test_a_cursor_of_another_sort_order_is_refused() -> None:
    row = Thing(id=uuid.uuid4(), rank=1, name="a")
    cursor = encode_cursor(parse_order_by(MAPPER, "name", pk_key="id"), row)
    with pytest.raises(BadRequestError, match="different sort order"):
        decode_cursor(parse_order_by(MAPPER, "-name", pk_key="id"), cursor)


def test_sort_orders_are_parsed_from_names_and_attributes() -> None:
    keys = parse_order_by(MAPPER, [Thing.rank.desc(), "+name", Thing.price, "name"], pk_key="id")
    assert [k.token for k in keys] == ["-rank", "name", "price", "id"]
    assert [k.token for k in parse_order_by(MAPPER, "-id", pk_key="id")] == ["-id"]
    with pytest.raises(ValidationError, match="sortable fields are colour, created_at, id, name"):
        parse_order_by(MAPPER, "nope", pk_key="id")
    with pytest.raises(ValidationError, match="give a field name or an attribute"):
        parse_order_by(MAPPER, [Thing.rank + 1], pk_key="id")  # type: ignore[list-item]
