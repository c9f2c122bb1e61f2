"""Hand each test its own namespace on a shared service, and remove it afterwards.

One context manager per service. Each yields a :class:`ServiceURL` pointing into the new namespace and
cleans up on exit, whether the test passed or not. The drivers are the optional extras; the async ones
run on a private event loop (see :func:`run_sync`), because fixtures are sync so that they work with or
without an async test plugin.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from mainspring._compat import require
from mainspring.errors import ServiceUnavailableError
from mainspring.testing._services import SessionState
from mainspring.testing._url import ServiceURL, mask_password, replace_path

__all__ = [
    "RABBITMQ_MANAGEMENT_ENV",
    "isolated_mariadb",
    "isolated_nats",
    "isolated_postgres",
    "isolated_rabbitmq",
    "isolated_redis",
    "new_namespace",
    "run_sync",
]

T = TypeVar("T")

#: Override for the RabbitMQ management API the vhost-per-test isolation uses.
RABBITMQ_MANAGEMENT_ENV = "MAINSPRING_TEST_RABBITMQ_MANAGEMENT_URL"
DEFAULT_RABBITMQ_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"

#: Every namespace starts with this, so leftovers of a killed run are easy to find and remove.
NAMESPACE_PREFIX = "ms_t_"
CONNECT_TIMEOUT = 5.0
# Dropping a database can wait for sessions to end; generous, but never unbounded.
COMMAND_TIMEOUT = 30.0

REDIS_CLAIM_KEY = "mainspring:testkit:db:{}"
# A claim outlives a crashed test process by at most this long; a live test longer than this may lose it.
REDIS_CLAIM_TTL = 600
REDIS_CLAIM_WAIT = 10.0
_REDIS_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
)


def new_namespace() -> str:
    """Return a fresh name usable as a database, vhost, queue or stream name (letters, digits, ``_``)."""
    return NAMESPACE_PREFIX + secrets.token_hex(6)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine made by ``factory`` to completion from sync code and return its result.

    Uses ``asyncio.run`` when no loop is running in this thread, else a short-lived thread with its own
    loop, since a running loop cannot be re-entered (a fixture called from async code, for instance).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mainspring-testkit") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --- PostgreSQL -----------------------------------------------------------------------------------


async def _postgres_execute(url: str, statement: str) -> None:
    asyncpg = require("asyncpg", extra="postgres", feature="the postgres_url fixture")
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(statement, timeout=COMMAND_TIMEOUT)
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT)


@contextmanager
def isolated_postgres(url: str) -> Iterator[ServiceURL]:
    """Create a database for one test through ``url``'s database, and drop it afterwards."""
    require("asyncpg", extra="postgres", feature="the postgres_url fixture")
    name = new_namespace()
    run_sync(lambda: _postgres_execute(url, f'CREATE DATABASE "{name}"'))
    try:
        yield ServiceURL(replace_path(url, name), service="postgres", namespace=name, isolation="database")
    finally:
        # FORCE ends sessions the test left open (PostgreSQL 13+).
        run_sync(lambda: _postgres_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- MariaDB / MySQL ------------------------------------------------------------------------------


async def _mysql_run(url: str, name: str, *, create: bool) -> None:
    asyncmy = require("asyncmy", extra="mysql", feature="the mariadb_url fixture")
    parts = urlsplit(url)
    conn = await asyncmy.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        connect_timeout=CONNECT_TIMEOUT,
        autocommit=True,
    )
    try:
        async with conn.cursor() as cur:
            if create:
                await cur.execute(f"CREATE DATABASE `{name}`")
                return
            await cur.execute(f"SET SESSION lock_wait_timeout = {int(COMMAND_TIMEOUT)}")
            # MariaDB has no DROP ... FORCE: end the sessions the test left in the database first, so
            # an open transaction cannot hold the drop on a metadata lock.
            await cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                (name,),
            )
            for (session_id,) in await cur.fetchall():
                try:
                    await cur.execute(f"KILL CONNECTION {int(session_id)}")
                except asyncmy.errors.MySQLError as exc:
                    # 1094 "unknown thread id": the session ended on its own meanwhile.
                    if not exc.args or exc.args[0] != 1094:
                        raise
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()


@contextmanager
def isolated_mariadb(url: str) -> Iterator[ServiceURL]:
    """Create a database for one test on the server at ``url``, and drop it afterwards."""
    require("asyncmy", extra="mysql", feature="the mariadb_url fixture")
    name = new_namespace()
    run_sync(lambda: _mysql_run(url, name, create=True))
    try:
        yield ServiceURL(replace_path(url, name), service="mariadb", namespace=name, isolation="database")
    finally:
        run_sync(lambda: _mysql_run(url, name, create=False))


# --- Redis ----------------------------------------------------------------------------------------


def _redis_database_count(admin: Any) -> int:
    redis = require("redis", extra="redis", feature="the redis_url fixture")
    try:
        value = admin.config_get("databases").get("databases")
    except redis.ResponseError:
        # Managed Redis often disables CONFIG; 16 is the server default.
        return 16
    return int(value) if value else 16


def _claim_redis_database(admin: Any, url: str, owner: str, claim_wait: float) -> int:
    count = _redis_database_count(admin)
    if count < 2:
        raise ServiceUnavailableError(
            f"redis at {mask_password(url)} has only database 0; the redis_url fixture needs more "
            "(set 'databases 16' in redis.conf)"
        )
    deadline = time.monotonic() + claim_wait
    while True:
        for number in range(1, count):
            # SET NX is the claim itself: no read-then-write window between two test processes.
            if admin.set(REDIS_CLAIM_KEY.format(number), owner, nx=True, ex=REDIS_CLAIM_TTL):
                return number
        if time.monotonic() >= deadline:
            raise ServiceUnavailableError(
                f"all {count - 1} redis test databases at {mask_password(url)} are claimed by other test "
                f"processes (keys {REDIS_CLAIM_KEY.format('*')} in db 0, {REDIS_CLAIM_TTL} s expiry); "
                f"run fewer parallel workers or wait for stale claims to expire"
            )
        time.sleep(0.1)


@contextmanager
def isolated_redis(url: str, *, claim_wait: float = REDIS_CLAIM_WAIT) -> Iterator[ServiceURL]:
    """Claim a free database number (1..N-1) for one test, flush it before and after, then release it.

    Claims are keys in database 0, so processes sharing the server never get the same number. When all
    are claimed, wait up to ``claim_wait`` seconds for one to be released, then give up.
    """
    redis = require("redis", extra="redis", feature="the redis_url fixture")
    options: dict[str, Any] = {"socket_timeout": COMMAND_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT}
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    with redis.Redis.from_url(replace_path(url, "0"), **options) as admin:
        number = _claim_redis_database(admin, url, owner, claim_wait)
        try:
            test_url = replace_path(url, str(number))
            with redis.Redis.from_url(test_url, **options) as client:
                client.flushdb()
                try:
                    yield ServiceURL(test_url, service="redis", namespace=str(number), isolation="db_number")
                finally:
                    client.flushdb()
        finally:
            admin.eval(_REDIS_RELEASE, 1, REDIS_CLAIM_KEY.format(number), owner)


# --- RabbitMQ -------------------------------------------------------------------------------------


class _Management:
    """The few RabbitMQ management API calls the fixture needs, over urllib."""

    def __init__(self, management_url: str, amqp_url: str) -> None:
        parts = urlsplit(management_url)
        amqp = urlsplit(amqp_url)
        user = unquote(parts.username or amqp.username or "guest")
        password = unquote(parts.password or amqp.password or "guest")
        netloc = parts.hostname or "127.0.0.1"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        path = parts.path.rstrip("/").removesuffix("/api")  # accept the URL with or without /api
        self.base = f"{parts.scheme or 'http'}://{netloc}{path}/api"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, str] | None = None) -> None:
        """Send one request.

        Raises ``OSError`` (``URLError``, timeouts) when nobody answers, and
        :class:`ServiceUnavailableError` when the API answers with an error status.
        """
        data = json.dumps(body).encode() if body is not None else None
        if not self.base.startswith(("http://", "https://")):
            raise ValueError(f"the management URL must be http(s), got {self.base!r}")
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            # The error holds the open response; close it, or its socket leaks until garbage collection.
            try:
                detail = exc.read(300).decode("utf-8", "replace")
            finally:
                exc.close()
            raise ServiceUnavailableError(
                f"the RabbitMQ management API at {self.base} answered {method} {path} with HTTP "
                f"{exc.code}: {detail} (check {RABBITMQ_MANAGEMENT_ENV} and its credentials)"
            ) from None


@contextmanager
def isolated_rabbitmq(
    url: str, state: SessionState, management_url: str | None = None
) -> Iterator[ServiceURL]:
    """Create a vhost for one test through the management API, grant the URL's user on it, delete it after.

    When the management API cannot be reached, yield the URL unchanged with a unique name prefix as the
    namespace instead; nothing is cleaned up then, so name queues/exchanges with the prefix and make
    them auto-delete.
    """
    require("aio_pika", extra="rabbitmq", feature="the rabbitmq_url fixture")
    name = new_namespace()
    mgmt_url = management_url or os.environ.get(RABBITMQ_MANAGEMENT_ENV) or DEFAULT_RABBITMQ_MANAGEMENT_URL
    masked = mask_password(mgmt_url)
    if masked in state.management_down:
        yield ServiceURL(url, service="rabbitmq", namespace=name, isolation="prefix")
        return
    api = _Management(mgmt_url, url)
    vhost_path = "/vhosts/" + quote(name, safe="")
    try:
        api.call("PUT", vhost_path, {})
    except OSError as exc:
        # Nobody answered (an HTTP error status raises ServiceUnavailableError instead: the API is
        # there but refuses, which is a problem to report, not a reason to fall back).
        state.management_down[masked] = f"{type(exc).__name__}: {exc}"
        created = False
    else:
        created = True
    if not created:
        yield ServiceURL(url, service="rabbitmq", namespace=name, isolation="prefix")
        return
    try:
        user = unquote(urlsplit(url).username or "guest")
        api.call(
            "PUT",
            f"/permissions/{quote(name, safe='')}/{quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield ServiceURL(
            replace_path(url, quote(name, safe="")), service="rabbitmq", namespace=name, isolation="vhost"
        )
    finally:
        api.call("DELETE", vhost_path)


# --- NATS -----------------------------------------------------------------------------------------


async def _nats_delete_streams(url: str, namespace: str) -> list[str]:
    nats = require("nats", extra="nats", feature="the nats_url fixture")
    js_errors = require("nats.js.errors", extra="nats", feature="the nats_url fixture")
    nc = await nats.connect(
        url, connect_timeout=CONNECT_TIMEOUT, allow_reconnect=False, max_reconnect_attempts=0
    )
    deleted: list[str] = []
    # Key-value buckets and object stores are streams named KV_<bucket> and OBJ_<bucket>.
    prefixes = (namespace, f"KV_{namespace}", f"OBJ_{namespace}")
    try:
        jsm = nc.jsm()
        try:
            names: list[str] = []
            while True:
                page = await jsm.streams_info(offset=len(names))
                if not page:
                    break
                names.extend(info.config.name for info in page)
        except (nats.errors.NoRespondersError, js_errors.ServiceUnavailableError):
            # JetStream is not enabled on this server, so the test cannot have made streams.
            return deleted
        for name in names:
            if name.startswith(prefixes):
                await jsm.delete_stream(name)
                deleted.append(name)
    finally:
        await nc.close()
    return deleted


@contextmanager
def isolated_nats(url: str) -> Iterator[ServiceURL]:
    """Give one test a unique name prefix; afterwards delete the JetStream streams and buckets using it."""
    require("nats", extra="nats", feature="the nats_url fixture")
    name = new_namespace()
    try:
        yield ServiceURL(url, service="nats", namespace=name, isolation="prefix")
    finally:
        run_sync(lambda: _nats_delete_streams(url, name))
