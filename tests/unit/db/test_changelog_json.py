"""Values in the change log are JSON every backend accepts."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

from mainspring.db._changelog import _jsonable


class Tier(enum.Enum):
    GOLD = "gold"


def test_column_values_become_json() -> None:
    moment = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    key = uuid.UUID(int=5)
    assert _jsonable(moment) == "2030-01-02T03:04:05+00:00"
    assert _jsonable(dt.date(2030, 1, 2)) == "2030-01-02"
    assert _jsonable(key) == str(key)
    assert _jsonable(decimal.Decimal("1.50")) == "1.50"
    assert _jsonable(Tier.GOLD) == "gold"
    assert _jsonable(b"\x00\x01") == "AAE="
    assert _jsonable({"a": [1, (2, key)]}) == {"a": [1, [2, str(key)]]}
    assert _jsonable(None) is None
    assert _jsonable(True) is True
    assert _jsonable(1.5) == 1.5


def test_non_finite_floats_become_text_because_postgresql_json_rejects_them() -> None:
    assert _jsonable(float("nan")) == "nan"
    assert _jsonable(float("-inf")) == "-inf"
