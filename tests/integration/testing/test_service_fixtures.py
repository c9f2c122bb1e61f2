"""The service fixtures against the real services: they work, they isolate, and they clean up.

Cleanup is checked from the outside: an inner test session (pytester, in-process) uses a fixture and
writes down the namespace it got; once that session is over, the namespace must be gone. Outer tests
that reach a service only through an inner session also request its fixture, so that they skip, or fail
under MAINSPRING_REQUIRE_SERVICES, like any other test when the service is down.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import asyncmy
import asyncpg
import nats
import pytest
import redis
from nats.js.errors import NotFoundError

from mainspring.testing import ServiceURL
from mainspring.testing._isolation import REDIS_CLAIM_KEY, run_sync
from mainspring.testing._services import configured_url

pytest_plugins = ["pytester"]

MANAGEMENT = "http://127.0.0.1:15672/api"
# Hypothesis' plugin costs most of an inner session's start-up and none of these inner tests need it.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q")
INNER_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def _management_get(path: str) -> Any:
    request = urllib.request.Request(MANAGEMENT + path, headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _run_inner(pytester: pytest.Pytester, body: str) -> tuple[pytest.RunResult, str]:
    """Run ``body`` as an inner test module; return the result and the namespace the test wrote down."""
    record = pytester.path / "namespace.txt"
    pytester.makeini(INNER_INI)
    pytester.makepyfile(
        test_inner=f"from pathlib import Path\nRECORD = Path({str(record)!r})\n\n" + body,
    )
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    return result, record.read_text()


async def _mysql_fetch(url: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    parts = urlsplit(url)
    conn = await asyncmy.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password="",
        database=parts.path.lstrip("/") or None,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        await conn.ensure_closed()


# --- PostgreSQL -----------------------------------------------------------------------------------


async def test_postgres_url_points_at_a_fresh_database_of_its_own(postgres_url: ServiceURL) -> None:
    assert isinstance(postgres_url, ServiceURL)
    assert postgres_url.service == "postgres"
    assert postgres_url.isolation == "database"
    assert postgres_url.namespace.startswith("ms_t_")
    assert postgres_url.startswith("postgresql://")
    assert postgres_url.sqlalchemy_url.startswith("postgresql+asyncpg://")
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == postgres_url.namespace
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO orders VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await conn.close()


@pytest.mark.usefixtures("postgres_url")
def test_postgres_database_is_dropped_after_the_test_even_when_it_fails(pytester: pytest.Pytester) -> None:
    result, name = _run_inner(
        pytester,
        "def test_uses_db(postgres_url):\n"
        "    RECORD.write_text(postgres_url.namespace)\n"
        "    assert False, 'the test fails; cleanup must still run'\n",
    )
    result.assert_outcomes(failed=1)
    assert name.startswith("ms_t_")

    async def exists() -> bool:
        conn = await asyncpg.connect(configured_url("postgres"))
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()

    assert run_sync(exists) is False


@pytest.mark.usefixtures("postgres_url")
def test_postgres_setup_refusal_fails_with_a_one_line_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server answers, but the role does not exist: a set-up failure, not an unreachable service.
    monkeypatch.setenv(
        "MAINSPRING_TEST_POSTGRES_URL", "postgresql://ms_no_such_role:pw-hidden@127.0.0.1:5432/test"
    )
    pytester.makeini(INNER_INI)
    pytester.makepyfile(test_inner="def test_uses_db(postgres_url):\n    pass\n")
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*postgres: could not set up an isolated namespace at "
            "postgresql://ms_no_such_role:***@127.0.0.1:5432/test: *ms_no_such_role*"
        ]
    )
    assert "pw-hidden" not in result.stdout.str()


# --- MariaDB --------------------------------------------------------------------------------------


async def test_mariadb_url_points_at_a_fresh_database_of_its_own(mariadb_url: ServiceURL) -> None:
    assert mariadb_url.service == "mariadb"
    assert mariadb_url.isolation == "database"
    assert mariadb_url.sqlalchemy_url.startswith("mysql+asyncmy://")
    assert await _mysql_fetch(mariadb_url, "SELECT DATABASE()") == [(mariadb_url.namespace,)]
    assert await _mysql_fetch(mariadb_url, f"SHOW TABLES FROM `{mariadb_url.namespace}`") == []
    await _mysql_fetch(mariadb_url, f"CREATE TABLE `{mariadb_url.namespace}`.orders (id int PRIMARY KEY)")
    assert await _mysql_fetch(mariadb_url, f"SHOW TABLES FROM `{mariadb_url.namespace}`") == [("orders",)]


@pytest.mark.usefixtures("mariadb_url")
def test_mariadb_database_is_dropped_after_the_test(pytester: pytest.Pytester) -> None:
    result, name = _run_inner(
        pytester,
        "def test_uses_db(mariadb_url):\n    RECORD.write_text(mariadb_url.namespace)\n",
    )
    result.assert_outcomes(passed=1)
    rows = run_sync(
        lambda: _mysql_fetch(
            configured_url("mariadb"),
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = %s",
            (name,),
        )
    )
    assert rows == []


# --- Redis ----------------------------------------------------------------------------------------


def test_redis_url_points_at_an_empty_claimed_database(redis_url: ServiceURL) -> None:
    assert redis_url.service == "redis"
    assert redis_url.isolation == "db_number"
    number = int(redis_url.namespace)
    assert 1 <= number <= 15
    with redis.Redis.from_url(redis_url) as client:
        assert client.connection_pool.connection_kwargs["db"] == number
        assert client.dbsize() == 0
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    with redis.Redis.from_url(configured_url("redis")) as admin:
        # Claimed in db 0, so no other test process can be handed the same number meanwhile.
        assert admin.get(REDIS_CLAIM_KEY.format(number)) is not None
        assert admin.get("greeting") is None


@pytest.mark.usefixtures("redis_url")
def test_redis_database_is_flushed_and_released_after_the_test(pytester: pytest.Pytester) -> None:
    result, number = _run_inner(
        pytester,
        "import redis\n\n"
        "def test_uses_db(redis_url):\n"
        "    RECORD.write_text(redis_url.namespace)\n"
        "    with redis.Redis.from_url(redis_url) as client:\n"
        "        client.set('left-behind', '1')\n",
    )
    result.assert_outcomes(passed=1)
    base = configured_url("redis")
    with redis.Redis.from_url(base.rsplit("/", 1)[0] + "/" + number) as client:
        assert client.get("left-behind") is None
    with redis.Redis.from_url(base) as admin:
        assert admin.get(REDIS_CLAIM_KEY.format(number)) is None


# --- RabbitMQ -------------------------------------------------------------------------------------


async def test_rabbitmq_url_points_at_a_fresh_vhost_of_its_own(rabbitmq_url: ServiceURL) -> None:
    assert rabbitmq_url.service == "rabbitmq"
    assert rabbitmq_url.isolation == "vhost"
    vhost = quote(rabbitmq_url.namespace, safe="")
    assert _management_get(f"/queues/{vhost}") == []
    connection = await aio_pika.connect(str(rabbitmq_url), timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("orders", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hi"), routing_key="orders")
        message = await queue.get(timeout=5)
        assert message.body == b"hi"
        await message.ack()
    # The queue lives in the test's vhost, not in the shared default one.
    assert [q["name"] for q in _management_get(f"/queues/{vhost}")] == ["orders"]
    assert "orders" not in [q["name"] for q in _management_get("/queues/%2F")]


@pytest.mark.usefixtures("rabbitmq_url")
def test_rabbitmq_vhost_is_deleted_after_the_test(pytester: pytest.Pytester) -> None:
    result, vhost = _run_inner(
        pytester,
        "def test_uses_vhost(rabbitmq_url):\n"
        "    assert rabbitmq_url.isolation == 'vhost'\n"
        "    RECORD.write_text(rabbitmq_url.namespace)\n",
    )
    result.assert_outcomes(passed=1)
    with pytest.raises(urllib.error.HTTPError) as info:
        _management_get("/vhosts/" + quote(vhost, safe=""))
    info.value.close()
    assert info.value.code == 404


@pytest.mark.usefixtures("rabbitmq_url")
def test_rabbitmq_falls_back_to_a_name_prefix_without_the_management_api(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:1")
    result, namespace = _run_inner(
        pytester,
        "def test_uses_prefix(rabbitmq_url):\n"
        "    assert rabbitmq_url.isolation == 'prefix'\n"
        "    assert str(rabbitmq_url) == 'amqp://guest:guest@127.0.0.1:5672/'\n"
        "    RECORD.write_text(rabbitmq_url.namespace)\n",
    )
    result.assert_outcomes(passed=1)
    assert namespace.startswith("ms_t_")
    result.stdout.fnmatch_lines(
        ["mainspring: the RabbitMQ management API at http://guest:***@127.0.0.1:1 was unreachable*"]
    )


# --- NATS -----------------------------------------------------------------------------------------


async def test_nats_url_gives_a_prefix_no_stream_uses_yet(nats_url: ServiceURL) -> None:
    assert nats_url.service == "nats"
    assert nats_url.isolation == "prefix"
    prefix = nats_url.namespace
    nc = await nats.connect(str(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        jsm = nc.jsm()
        assert not [s for s in await jsm.streams_info() if s.config.name.startswith(prefix)]
        await jsm.add_stream(name=f"{prefix}_orders", subjects=[f"{prefix}.orders"])
        js = nc.jetstream()
        ack = await js.publish(f"{prefix}.orders", b"hi")
        assert ack.stream == f"{prefix}_orders"
        assert (await jsm.stream_info(f"{prefix}_orders")).state.messages == 1
    finally:
        await nc.close()


@pytest.mark.usefixtures("nats_url")
def test_nats_streams_and_kv_buckets_with_the_prefix_are_deleted_after_the_test(
    pytester: pytest.Pytester,
) -> None:
    result, prefix = _run_inner(
        pytester,
        "import asyncio\nimport nats\n\n"
        "async def make(url, prefix):\n"
        "    nc = await nats.connect(url)\n"
        "    js = nc.jetstream()\n"
        "    await js.add_stream(name=prefix + '_events', subjects=[prefix + '.events'])\n"
        "    await js.create_key_value(bucket=prefix + '_cache')\n"
        "    await nc.close()\n\n"
        "def test_uses_prefix(nats_url):\n"
        "    RECORD.write_text(nats_url.namespace)\n"
        "    asyncio.run(make(str(nats_url), nats_url.namespace))\n",
    )
    result.assert_outcomes(passed=1)

    async def leftovers() -> list[str]:
        nc = await nats.connect(configured_url("nats"), connect_timeout=5, allow_reconnect=False)
        try:
            jsm = nc.jsm()
            missing = []
            for name in (f"{prefix}_events", f"KV_{prefix}_cache"):
                try:
                    await jsm.stream_info(name)
                except NotFoundError:
                    missing.append(name)
            return missing
        finally:
            await nc.close()

    assert run_sync(leftovers) == [f"{prefix}_events", f"KV_{prefix}_cache"]


# --- Across services ------------------------------------------------------------------------------


def test_service_fixtures_mark_their_tests_as_integration(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile(
        test_inner=(
            "def test_with_service(redis_url):\n    pass\n\ndef test_without_service(tmp_path):\n    pass\n"
        )
    )
    result = pytester.runpytest_inprocess(*INNER_ARGS, "-m", "not integration")
    result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.usefixtures("redis_url")
def test_service_url_override_from_environment_is_used(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "localhost" instead of the default 127.0.0.1: same server, but only the override spells it so.
    monkeypatch.setenv("MAINSPRING_TEST_REDIS_URL", "redis://localhost:6379/0")
    result, number = _run_inner(
        pytester,
        "def test_uses_db(redis_url):\n"
        "    assert redis_url.startswith('redis://localhost:6379/')\n"
        "    RECORD.write_text(redis_url.namespace)\n",
    )
    result.assert_outcomes(passed=1)
    assert number.isdigit()
