"""OutboxRelay's settings are checked when it is made, before anything connects."""

from __future__ import annotations

import pytest

from mainspring.db import Database
from mainspring.errors import ConfigError
from mainspring.events import OutboxRelay
from mainspring.messaging import Broker
from mainspring.messaging.memory import MemoryTransport


@pytest.fixture
def parts() -> tuple[Database, Broker]:
    return Database("sqlite+aiosqlite:///:memory:"), Broker(MemoryTransport("memory://relay-settings"))


def test_published_rows_are_deleted_unless_a_retention_keeps_them(parts: tuple[Database, Broker]) -> None:
    assert OutboxRelay(*parts).retention == 0
    assert OutboxRelay(*parts, retention=600).retention == 600


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("retention", -1),
        ("retention", "1h"),
        ("batch_size", 0),
        ("poll_interval", 0),
        ("cleanup_interval", -5),
    ],
)
def test_bad_settings_are_refused_with_the_option_named(
    parts: tuple[Database, Broker], option: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=option):
        OutboxRelay(*parts, **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_a_bad_relay_concurrency_is_refused(parts: tuple[Database, Broker], concurrency: object) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        OutboxRelay(*parts, concurrency=concurrency)  # type: ignore[arg-type]


def test_sqlite_relays_one_batch_at_a_time(parts: tuple[Database, Broker]) -> None:
    with pytest.raises(ConfigError, match="SQLite"):
        OutboxRelay(*parts, concurrency=2)
    assert OutboxRelay(*parts, concurrency=1).concurrency == 1
