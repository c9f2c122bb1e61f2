"""UTCDateTime: aware UTC in, aware UTC out, on every dialect; naive values refused."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from mainspring.db import UTCDateTime
from mainspring.errors import ValidationError

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect(), "mysql": mysql.dialect()}
TYPE = UTCDateTime()
ZONES = st.builds(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60))


@pytest.mark.parametrize("name", DIALECTS)
@given(
    moment=st.datetimes(
        min_value=dt.datetime(1900, 1, 2), max_value=dt.datetime(9998, 12, 30), timezones=ZONES
    )
)
def test_an_aware_value_comes_back_as_the_same_instant_in_utc(name: str, moment: dt.datetime) -> None:
    dialect: Dialect = DIALECTS[name]
    stored = TYPE.process_bind_param(moment, dialect)
    assert stored is not None
    # PostgreSQL keeps the zone (timestamptz); zone-less backends get naive UTC.
    assert (stored.tzinfo is not None) == (name == "postgresql")
    loaded = TYPE.process_result_value(stored, dialect)
    assert loaded == moment
    assert loaded is not None
    assert loaded.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("name", DIALECTS)
def test_a_naive_value_is_refused_with_advice(name: str) -> None:
    with pytest.raises(
        ValidationError, match=r"naive datetime 2030-01-01T00:00:00 given.*datetime.now\(datetime.UTC\)"
    ):
        TYPE.process_bind_param(dt.datetime(2030, 1, 1), DIALECTS[name])


def test_a_non_datetime_is_refused() -> None:
    with pytest.raises(ValidationError, match="expected a datetime for a UTCDateTime column, got str"):
        TYPE.process_bind_param("2030-01-01", DIALECTS["sqlite"])  # type: ignore[arg-type]


def test_none_passes_through_and_text_from_sqlite_is_read() -> None:
    assert TYPE.process_bind_param(None, DIALECTS["sqlite"]) is None
    assert TYPE.process_result_value(None, DIALECTS["sqlite"]) is None
    loaded = TYPE.process_result_value("2030-01-01 10:00:00.000123", DIALECTS["sqlite"])
    assert loaded == dt.datetime(2030, 1, 1, 10, 0, 0, 123, tzinfo=dt.UTC)


def test_column_types_keep_the_zone_on_postgresql_and_microseconds_on_mysql() -> None:
    def ddl(name: str) -> str:
        return str(TYPE.load_dialect_impl(DIALECTS[name]).compile(dialect=DIALECTS[name]))

    assert ddl("postgresql") == "TIMESTAMP WITH TIME ZONE"
    assert ddl("mysql") == "DATETIME(6)"
