"""Redis cache URLs (standalone, Sentinel, Cluster), the clients built for them, the options and the
circuit breaker - all without a server (no Sentinel or Cluster exists in the test environment)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from mainspring.cache import CacheSettings, RedisCache, SyncRedisCache, create_cache
from mainspring.cache._breaker import CircuitBreaker
from mainspring.cache._redis_client import ClientOptions, async_client, glob, parse_target
from mainspring.errors import ConfigError
from mainspring.testing import capture_logs


def test_a_plain_url_is_a_standalone_server_with_its_database_and_credentials() -> None:
    target = parse_target("redis://app:p%40ss@cache.internal:6380/3")
    assert (target.kind, target.nodes, target.db) == ("standalone", (("cache.internal", 6380),), 3)
    assert (target.username, target.password, target.ssl) == ("app", "p@ss", False)
    assert "p@ss" not in repr(target)


def test_defaults_and_tls() -> None:
    assert parse_target("redis://").nodes == (("localhost", 6379),)
    target = parse_target("rediss://h?ssl_cert_reqs=none")
    assert target.ssl
    assert dict(target.ssl_options) == {"ssl_cert_reqs": "none"}


def test_sentinel_urls_name_the_master_and_several_sentinels() -> None:
    target = parse_target("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/2")
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.service, target.db, target.password) == ("mymaster", 2, "pw")


def test_cluster_urls_by_scheme_or_query() -> None:
    assert parse_target("redis+cluster://n1:7000,n2:7001").nodes == (("n1", 7000), ("n2", 7001))
    target = parse_target("rediss://n1:7000?cluster=true")
    assert (target.kind, target.ssl) == ("cluster", True)
    assert parse_target("redis://n1?cluster=false").kind == "standalone"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://h/abc", "database number"),
        ("redis://h:99999/0", "host[:port]"),
        ("redis://a,b/0", "one host only"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+cluster://n1:7000/3", "only has database 0"),
        ("redis://h?cluster=maybe", "true or false"),
        ("redis://h?pool=9", "not an option"),
        ("redis+sentinel://s1/m?cluster=true", "not an option of redis+sentinel"),
    ],
)
def test_bad_urls_are_config_errors_naming_the_problem(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_target(url)
    assert any(reason in p.reason for p in raised.value.problems), raised.value.problems


def test_a_password_never_appears_in_url_errors() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_target("redis://u:topsecret@h/x")
    assert "topsecret" not in str(raised.value)


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    port=st.integers(1, 65535),
    db=st.integers(0, 15),
)
def test_any_host_port_and_database_round_trips(host: str, port: int, db: int) -> None:
    target = parse_target(f"redis://{host}:{port}/{db}")
    assert (target.nodes, target.db) == (((host, port),), db)


@given(prefix=st.text(max_size=30))
def test_scan_patterns_match_the_prefix_literally(prefix: str) -> None:
    pattern = glob(prefix)
    assert pattern.endswith("*")
    unescaped = []
    chars = iter(pattern[:-1])
    for c in chars:
        if c == "\\":
            unescaped.append(next(chars))
        else:
            assert c not in "*?[]", "every glob character is escaped"
            unescaped.append(c)
    assert "".join(unescaped) == prefix


async def test_sentinel_and_cluster_clients_are_built_without_connecting() -> None:
    options = ClientOptions(timeout=0.1, connect_timeout=0.1, max_connections=7)
    sentinel = async_client(parse_target("redis+sentinel://127.0.0.1:1/mymaster/1"), options)
    assert isinstance(sentinel, aioredis.Redis)
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "mymaster"
    await sentinel.aclose()
    cluster = async_client(parse_target("redis+cluster://127.0.0.1:1,127.0.0.1:2"), options)
    assert isinstance(cluster, RedisCluster)
    await cluster.aclose()
    standalone = async_client(parse_target("redis://127.0.0.1:1/4"), options)
    pool = standalone.connection_pool
    assert (pool.max_connections, pool.timeout, pool.connection_kwargs["db"]) == (7, 0.1, 4)
    await standalone.aclose()


def test_create_cache_accepts_the_sentinel_and_cluster_schemes() -> None:
    cache = create_cache("redis+sentinel://s1,s2/mymaster/0?redis_timeout=0.5")
    assert isinstance(cache, RedisCache)
    assert cache.target.kind == "sentinel"
    assert cache._timeout == 0.5
    clustered = create_cache(CacheSettings(url="redis://n1:7000?cluster=true", namespace="svc"))
    assert isinstance(clustered, RedisCache)
    assert clustered.target.kind == "cluster"
    assert clustered.keys.namespace == "svc"
    with pytest.raises(ConfigError, match="invalid Redis cache URL"):
        create_cache("redis://h/0?bogus=1")


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": float("inf")}, {"max_connections": 0}, {"breaker_failures": True}],
)
def test_bad_connection_options_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="invalid Redis cache options"):
        RedisCache("redis://h/0", **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid Redis cache options"):
        SyncRedisCache("redis://h/0", **options)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 5.0, clock=clock)
    assert breaker.allow()
    assert not breaker.failure()
    assert not breaker.failure()
    breaker.success()  # not consecutive any more
    assert not breaker.failure()
    assert not breaker.failure()
    assert breaker.failure(), "the third consecutive failure opens it"
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_in() == 5.0
    clock.now = 5.0
    assert breaker.state == "half-open"
    assert breaker.allow(), "one probe"
    assert not breaker.allow(), "only one probe at a time"
    assert breaker.failure(), "a failed probe opens it again"
    assert breaker.opened == 2
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    assert breaker.success(), "a good probe closes it"
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_lost_probe_does_not_keep_the_breaker_open_forever() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.allow()  # the probe's caller is cancelled: no outcome is ever reported
    clock.now = 1.5
    assert not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/mymaster"])
async def test_an_unreachable_sentinel_or_cluster_degrades_like_a_server(url: str) -> None:
    with capture_logs():
        async with RedisCache(url, timeout=0.3, connect_timeout=0.1) as cache:
            assert await cache.get("k", "default") == "default"
            await cache.set("k", "v")
            assert not (await cache.health()).healthy
    assert cache.stats().errors >= 2


def test_a_sync_cache_on_an_unreachable_cluster_starts_and_degrades() -> None:
    with (
        capture_logs(),
        SyncRedisCache("redis+cluster://127.0.0.1:1", timeout=0.2, connect_timeout=0.1) as cache,
    ):
        assert cache.get("k", "default") == "default"
        cache.set("k", "v")
    assert cache.stats().errors >= 2
