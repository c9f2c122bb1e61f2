"""MultiLevelCache: promotion, the L1 bound, both levels on writes, coherence between instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from mainspring.cache import MemoryCache, MultiLevelCache, RedisCache, create_cache
from mainspring.cache._coherence import PromotionGuard, RedisInvalidation, channel_name
from mainspring.errors import ConfigError
from mainspring.testing import ServiceURL, capture_logs


class Clock:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def two_levels(clock: Clock, **options: Any) -> tuple[MemoryCache, MemoryCache]:
    """An L1 and a byte-storing L2, both on ``clock``."""
    return MemoryCache(clock=clock), MemoryCache(store="bytes", clock=clock, **options)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> float:
    """Poll ``check`` until it holds; return how long it took, fail after ``within`` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


# --- one instance, L2 in memory ---------------------------------------------------------------------


async def test_an_l2_hit_is_promoted_into_l1_with_the_bounded_ttl() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    cache = MultiLevelCache(l1, l2, l1_max_ttl=10)
    async with cache:
        await l2.set("k", "v", ttl=100)
        assert await cache.get("k") == "v"
        assert await l1.ttl("k") == pytest.approx(10), "min(l1_max_ttl, what is left in L2)"
        await l2.set("short", "s", ttl=3)
        assert await cache.get("short") == "s"
        assert await l1.ttl("short") == pytest.approx(3), "never longer than the entry has left"
        levels = cache.level_stats()
        assert (levels["l1"].misses, levels["l2"].hits) == (2, 2)
        assert await cache.get("k") == "v"
        assert cache.level_stats()["l1"].hits == 1
        assert (cache.stats().hits, cache.stats().misses) == (3, 0)


async def test_without_invalidation_a_stale_l1_value_lasts_at_most_l1_max_ttl() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    cache = MultiLevelCache(l1, l2, l1_ttl=5, l1_max_ttl=8)
    async with cache:
        await cache.set("k", "old", ttl=300)
        await l2.set("k", "new", ttl=300)  # another instance writes, and nobody tells this one
        clock.advance(4.9)
        assert await cache.get("k") == "old"
        clock.advance(0.2)
        assert await cache.get("k") == "new", "past l1_ttl the value comes from L2"


async def test_writes_and_deletes_reach_both_levels() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    async with MultiLevelCache(l1, l2) as cache:
        await cache.set_many({"a": 1, "b": None}, ttl=30)
        assert await l1.get_many(["a", "b"]) == {"a": 1, "b": None}
        assert await l2.get_many(["a", "b"]) == {"a": 1, "b": None}
        assert await cache.delete("a")
        assert not await cache.delete("a")
        assert await l1.get("a", "gone") == "gone"
        assert await l2.get("a", "gone") == "gone"
        await cache.set("c:1", 1, tags=["t"])
        await cache.invalidate_tags("t")
        assert await l1.get("c:1", "gone") == "gone"
        assert await cache.get("c:1", "gone") == "gone"
        await cache.set("p:1", 1)
        assert await cache.clear("p:") == 1
        assert await l1.get("p:1", "gone") == "gone"


async def test_incr_and_expire_go_to_l2_and_drop_the_l1_copy() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    async with MultiLevelCache(l1, l2) as cache:
        await cache.set("n", 1)
        assert await cache.incr("n", 4) == 5
        assert await cache.get("n") == 5
        assert await cache.expire("n", 7)
        assert await cache.ttl("n") == pytest.approx(7)
        assert await l1.get("n", "gone") == "gone"


async def test_get_or_set_loads_once_across_both_levels_and_promotes() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "v"

    async with MultiLevelCache(l1, l2, l1_max_ttl=20) as cache:
        assert set(await asyncio.gather(*(cache.get_or_set("k", loader, ttl=60) for _ in range(300)))) == {
            "v"
        }
        assert calls == 1
        assert cache.level_stats()["l2"].misses == 1, "one L2 read for all 300 callers"
        assert await l1.ttl("k") == pytest.approx(20)
        clock.advance(25)  # L1 copy gone, L2 still fresh: served from L2 without the loader
        assert await cache.get_or_set("k", loader, ttl=60) == "v"
        assert calls == 1


async def test_a_tag_invalidated_in_l2_is_not_promoted() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    async with MultiLevelCache(l1, l2) as cache:
        await l2.set("k", "v", tags=["t"])
        await l2.invalidate_tags("t")
        assert await cache.get("k", "miss") == "miss"
        assert await l1.get("k", "none") == "none"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"l1_ttl": 0}, "cache.l1_ttl"),
        ({"l1_max_ttl": float("inf")}, "cache.l1_max_ttl"),
        ({"l1_max_ttl": True}, "cache.l1_max_ttl"),
        ({"l1_ttl": "5"}, "cache.l1_ttl"),
    ],
)
def test_bad_l1_bounds_are_config_errors(options: dict[str, Any], field: str) -> None:
    l1, l2 = two_levels(Clock())
    with pytest.raises(ConfigError) as info:
        MultiLevelCache(l1, l2, **options)
    assert [p.path for p in info.value.problems] == [field]


def test_one_cache_cannot_be_both_levels() -> None:
    l1 = MemoryCache()
    with pytest.raises(ConfigError, match="multi-level"):
        MultiLevelCache(l1, l1)


def test_a_read_overlapping_an_invalidation_of_its_key_is_not_promoted() -> None:
    guard = PromotionGuard()
    start = guard.begin(["a", "b"])
    guard.note("keys", ["a", "zzz"])
    assert guard.end(["a", "b"], start) == [False, True]
    start = guard.begin(["a"])
    assert guard.end(["a"], start) == [True], "a later read is not affected"
    start = guard.begin(["a"])
    guard.note("tags", ["t"])
    assert guard.end(["a"], start) == [False], "tags, prefixes and flushes may cover any key"
    assert len(guard) == 0, "nothing kept once the reads are over"


def test_the_channel_is_per_namespace_and_database() -> None:
    assert channel_name("redis://h:6379/3", "orders") == "mainspring.cache:orders:invalidate:3"
    assert channel_name("redis://h", "orders") == "mainspring.cache:orders:invalidate:0"
    assert channel_name("redis://h/3", "a") != channel_name("redis://h/3", "b")


async def test_an_unreachable_channel_leaves_l1_unused_and_shows_in_health() -> None:
    clock = Clock()
    l1, l2 = two_levels(clock)
    channel = RedisInvalidation(
        "redis://127.0.0.1:1/0", namespace="ml", connect_timeout=0.2, reconnect_delay=0.05
    )
    with capture_logs() as logs:
        async with MultiLevelCache(l1, l2, invalidation=channel) as cache:
            await cache.set("k", "v")
            assert await cache.get("k") == "v"
            assert await l1.get("k", "unused") == "unused", "no subscription, no L1"
            await eventually(lambda: _true(cache.coherence_stats().subscriber_errors >= 2))
            health = await cache.health()
            assert health.healthy
            assert "invalidation channel down" in health.detail
            assert cache.stats().errors >= 2
    assert any(
        r["event"] == "cache invalidation channel lost; L1 flushed and unused until re-subscribed"
        for r in logs
    )
    assert channel.stats().publish_errors >= 1


# --- two instances over Redis -----------------------------------------------------------------------

Factory = Callable[..., Awaitable[MultiLevelCache]]


@pytest.fixture
async def instance(redis_url: ServiceURL) -> AsyncIterator[Factory]:
    """Build started multi-level caches sharing the test's Redis database; all stopped afterwards."""
    made: list[MultiLevelCache] = []

    async def make(**options: Any) -> MultiLevelCache:
        channel = RedisInvalidation(str(redis_url), namespace="ml", **options.pop("channel_options", {}))
        l2 = RedisCache(str(redis_url), namespace="ml", timeout=2.0)
        cache = MultiLevelCache(MemoryCache(), l2, invalidation=channel, **options)
        await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.stop()


async def test_a_write_in_one_instance_drops_the_key_from_the_others_l1(instance: Factory) -> None:
    a, b = await instance(), await instance()
    await a.set("k", "v1")
    # A read racing with the message about its key is not promoted (it may be the old value): wait.
    await eventually(lambda: _true(b.coherence_stats().received == 1))
    assert await b.get("k") == "v1"
    assert await b.l1.get("k") == "v1"
    await a.set("k", "v2")
    await eventually(lambda: _is(b.get("k"), "v2"))
    await a.delete("k")
    await eventually(lambda: _is(b.get("k", "gone"), "gone"))
    assert b.coherence_stats().received == 3


async def test_tags_and_prefixes_are_dropped_from_every_l1(instance: Factory) -> None:
    a, b = await instance(), await instance()
    await a.set("user:1", "ada", tags=["users"])
    await a.set("order:1", "o1")
    assert await b.get("user:1") == "ada"
    assert await b.get("order:1") == "o1"
    await a.invalidate_tags("users")
    await eventually(lambda: _is(b.get("user:1", "gone"), "gone"))
    await a.clear("order:")
    await eventually(lambda: _is(b.l1.get("order:1", "gone"), "gone"))


async def test_own_messages_are_ignored(instance: Factory) -> None:
    a = await instance()
    await a.set("k", "v")
    await eventually(lambda: _true(a.coherence_stats().ignored >= 1))
    assert await a.l1.get("k") == "v", "its own write stays in its L1"
    assert a.coherence_stats().received == 0


async def test_a_killed_subscriber_reconnects_flushes_l1_and_shows_in_health(
    instance: Factory, redis_url: ServiceURL
) -> None:
    # The reconnect waits 0.3 s at least, so the write below lands while b is not subscribed.
    b = await instance(channel_options={"reconnect_delay": 0.6})
    a = await instance()
    await a.set("k", "old")
    assert await b.get("k") == "old"
    with redis.Redis.from_url(str(redis_url)) as admin:
        assert admin.client_kill_filter(_type="pubsub") >= 2  # type: ignore[no-untyped-call]
    await eventually(lambda: _true(not b.invalidation.connected))  # type: ignore[union-attr]
    health = await b.health()
    assert health.healthy, "L2 is fine; only L1 is out of use"
    assert "invalidation channel down" in health.detail
    await a.set("k", "new")  # b is not subscribed: this message is lost for b
    assert await b.get("k") == "new", "while the channel is down L1 is flushed and bypassed"
    await eventually(lambda: _true(b.coherence_stats().reconnects == 1))
    assert b.l1_flushes >= 2, "once on the loss, once after re-subscribing"
    stats = b.coherence_stats()
    assert stats.subscriber_errors >= 1
    assert stats.connected
    assert "errors" in (await b.health()).detail
    await a.set("k", "newer")
    await eventually(lambda: _is(b.get("k"), "newer"))


async def test_create_cache_builds_the_multi_level_form(redis_url: ServiceURL) -> None:
    url = str(redis_url).replace("redis://", "memory+redis://", 1)
    cache = create_cache(f"{url}?l1_ttl=5&l1_max_ttl=30&namespace=factory&max_size=100")
    assert isinstance(cache, MultiLevelCache)
    async with cache:
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        assert await cache.l1.ttl("k") == pytest.approx(5, abs=0.1)
        assert cache.invalidation is not None
        assert cache.invalidation.channel.startswith("mainspring.cache:factory:invalidate:")
        assert (await cache.health()).healthy


def test_the_multi_level_url_builds_without_connecting_and_hides_the_password() -> None:
    cache = create_cache("memory+redis://:s3cret@localhost:6379/2?invalidation=none&l1_ttl=2")
    assert isinstance(cache, MultiLevelCache)
    assert cache.invalidation is None
    assert "s3cret" not in repr(cache)
    with_channel = create_cache("memory+redis://:s3cret@localhost:6379/2")
    assert isinstance(with_channel, MultiLevelCache)
    assert with_channel.invalidation is not None
    assert "s3cret" not in repr(with_channel.invalidation)
    assert with_channel.invalidation.channel == "mainspring.cache:mainspring:invalidate:2"


@pytest.mark.parametrize("query", ["l1_ttl=soon", "invalidation=tracking", "l1_max_ttl=0"])
def test_create_cache_rejects_bad_multi_level_options(query: str) -> None:
    with pytest.raises(ConfigError):
        create_cache(f"memory+redis://localhost:6379/0?{query}")


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def _true(condition: bool) -> bool:
    return condition
