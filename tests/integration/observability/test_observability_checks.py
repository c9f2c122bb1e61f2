"""The built-in health checks and the subsystem collector against real databases, Redis and brokers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import MetaData

from mainspring.cache import RedisCache
from mainspring.db import NAMING_CONVENTION, Database
from mainspring.events import Outbox, OutboxEntry, OutboxRelay
from mainspring.messaging import Broker, create_broker
from mainspring.observability import (
    HEALTH_PROBE_TOPIC,
    HealthChecker,
    HealthStatus,
    MetricsRegistry,
    broker_check,
    cache_check,
    database_check,
    outbox_check,
)
from mainspring.testing import capture_logs

pytestmark = pytest.mark.integration


async def _run(*checks: object) -> HealthChecker:
    health = HealthChecker(cache_ttl=0)
    for check in checks:
        health.add(check)  # type: ignore[arg-type]
    return health


# --- database -----------------------------------------------------------------------------------------


async def test_database_check_passes_on_a_started_database(database: Database) -> None:
    report = await (await _run(database_check(database))).ready()
    entry = report.check("database")
    assert entry.status is HealthStatus.PASS, entry.output
    assert entry.observed["round_trip"] >= 0
    assert entry.observed["pool_open"] >= 1


async def test_database_check_fails_when_the_pool_has_no_connection_in_time(db_url: str) -> None:
    db = Database(db_url, pool_size=1, max_overflow=0, pool_timeout=5.0, connect_timeout=5.0)
    async with db, db.engine.connect() as held:
        await held.exec_driver_sql("SELECT 1")
        health = await _run(database_check(db, timeout=0.2))
        with capture_logs():
            report = await health.ready()
    entry = report.check("database")
    assert entry.status is HealthStatus.FAIL
    assert "did not answer a ping within 0.2 s" in entry.output
    assert report.http_status == 503


async def test_database_check_fails_when_the_database_is_stopped(db_url: str) -> None:
    db = Database(db_url)
    async with db:
        pass
    with capture_logs():
        report = await (await _run(database_check(db))).ready()
    assert report.check("database").status is HealthStatus.FAIL
    assert report.check("database").output.startswith("db_not_started: ")


# --- cache --------------------------------------------------------------------------------------------


async def test_cache_check_passes_on_redis(redis_url: str) -> None:
    cache = RedisCache(str(redis_url))
    async with cache:
        report = await (await _run(cache_check(cache))).ready()
    entry = report.check("cache")
    assert entry.status is HealthStatus.PASS, entry.output
    assert entry.observed["backend"] == "redis"


async def test_cache_check_fails_on_an_unreachable_redis_and_only_warns_when_not_critical() -> None:
    # Port 1 on the loopback: nothing listens, the connection is refused at once.
    cache = RedisCache("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2)
    with capture_logs():
        async with cache:
            health = await _run(cache_check(cache, name="critical-cache", critical=True), cache_check(cache))
            report = await health.ready()
    assert report.check("critical-cache").status is HealthStatus.FAIL
    assert report.check("cache").status is HealthStatus.WARN
    assert report.check("cache").output.endswith("(not critical)")


# --- broker -------------------------------------------------------------------------------------------


@pytest.fixture
async def memory_broker() -> AsyncIterator[Broker]:
    broker = create_broker(f"memory://{uuid.uuid4().hex}")
    yield broker
    await broker.stop(drain_timeout=0)


async def test_broker_check_passes_when_started_and_fails_when_not(memory_broker: Broker) -> None:
    health = await _run(broker_check(memory_broker))
    with capture_logs():
        before = await health.ready()
    assert before.check("broker").status is HealthStatus.FAIL
    assert "not started" in before.check("broker").output
    await memory_broker.start()
    await memory_broker.publish("orders", {"n": 1})
    started = await health.ready()
    assert started.check("broker").status is HealthStatus.PASS, started.check("broker").output
    assert started.check("broker").observed["published"] == 1
    await memory_broker.stop()
    with capture_logs():
        stopped = await health.ready()
    assert stopped.check("broker").status is HealthStatus.FAIL


async def test_broker_check_browses_a_subscribers_dead_letter_topic_on_redis(redis_url: str) -> None:
    broker = create_broker(str(redis_url), prefix=f"t{uuid.uuid4().hex[:8]}")

    @broker.subscriber("orders", group="billing")
    async def on_order(data: dict[str, int]) -> None:
        return None

    health = await _run(broker_check(broker, timeout=3.0))
    async with broker:
        report = await health.ready()
    assert report.check("broker").status is HealthStatus.PASS, report.check("broker").output
    assert report.check("broker").observed["transport"] == "RedisTransport"
    assert HEALTH_PROBE_TOPIC.endswith(".dlq")


# --- outbox -------------------------------------------------------------------------------------------


def _outbox_metadata() -> MetaData:
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    OutboxEntry.__table__.to_metadata(metadata)
    return metadata


async def test_outbox_check_passes_warns_and_fails_by_pending_count(database: Database) -> None:
    await database.create_all(_outbox_metadata())
    broker = create_broker(f"memory://{uuid.uuid4().hex}")
    relay = OutboxRelay(database, broker)  # never started: rows stay pending
    health = await _run(
        outbox_check(relay, name="strict", warn_pending=1, fail_pending=2, warn_age=None, fail_age=None),
        outbox_check(relay, name="lenient"),
    )
    empty = await health.ready()
    assert empty.check("strict").status is HealthStatus.PASS
    assert empty.check("strict").observed["pending"] == 0
    outbox = Outbox(database)
    async with database.transaction():
        await outbox.add("orders", {"n": 1})
        await outbox.add("orders", {"n": 2})
    warned = await health.ready()
    assert warned.check("strict").status is HealthStatus.WARN
    assert warned.check("strict").output.startswith("outbox backlog growing: 2 pending")
    async with database.transaction():
        await outbox.add("orders", {"n": 3})
    with capture_logs():
        failed = await health.ready()
    assert failed.check("strict").status is HealthStatus.FAIL
    assert failed.check("strict").observed["pending"] == 3
    assert failed.check("lenient").status is HealthStatus.PASS


async def test_outbox_check_fails_when_the_table_is_missing(database: Database) -> None:
    relay = OutboxRelay(database, create_broker(f"memory://{uuid.uuid4().hex}"))
    with capture_logs():
        report = await (await _run(outbox_check(relay))).ready()
    assert report.check("outbox").status is HealthStatus.FAIL


# --- metrics ------------------------------------------------------------------------------------------


async def test_collector_exports_pool_and_outbox_metrics(database: Database) -> None:
    await database.create_all(_outbox_metadata())
    relay = OutboxRelay(database, create_broker(f"memory://{uuid.uuid4().hex}"))
    metrics = MetricsRegistry()
    metrics.subsystems.add_database(database)
    metrics.subsystems.add_outbox_relay(relay)
    async with database.transaction():
        await Outbox(database).add("orders", {"n": 1})
    get = metrics.registry.get_sample_value
    assert get("db_pool_size", {"database": "default"}) == 5
    assert get("db_pool_connections_open", {"database": "default"}) >= 1
    assert get("db_pool_waits_total", {"database": "default"}) == 0
    assert get("outbox_pending", {"relay": "default"}) is None  # not read before a refresh
    await metrics.refresh()
    assert get("outbox_pending", {"relay": "default"}) == 1
    assert get("outbox_oldest_age_seconds", {"relay": "default"}) >= 0
    assert get("outbox_published_total", {"relay": "default"}) == 0


async def test_a_failed_backlog_read_leaves_the_outbox_gauges_out(database: Database) -> None:
    relay = OutboxRelay(database, create_broker(f"memory://{uuid.uuid4().hex}"))  # no outbox table
    metrics = MetricsRegistry()
    metrics.subsystems.add_outbox_relay(relay)
    with capture_logs() as logs:
        await metrics.refresh()
    assert metrics.registry.get_sample_value("outbox_pending", {"relay": "default"}) is None
    assert any(e["event"] == "outbox backlog unreadable for metrics" for e in logs)
