"""The in-memory cache: bounds, LRU and W-TinyLFU eviction, lazy expiry, store modes, the sync surface."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from mainspring.cache import CodecError, MemoryCache
from mainspring.cache._eviction import FrequencySketch, LruPolicy, Node, TinyLfuPolicy
from mainspring.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node(key: str, weight: int = 0) -> Node:
    return Node(key, None, None, 0.0, float("inf"), weight)


# --- policies ---------------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    policy = LruPolicy(max_entries=3, max_weight=None)
    nodes = {k: _node(k) for k in "abcd"}
    for k in "abc":
        assert policy.insert(nodes[k]) == []
    policy.touch(nodes["a"])
    assert [v.key for v in policy.insert(nodes["d"])] == ["b"]
    assert policy.count == 3


def test_lru_respects_a_byte_bound() -> None:
    policy = LruPolicy(max_entries=None, max_weight=100)
    policy.insert(_node("a", 40))
    policy.insert(_node("b", 40))
    assert [v.key for v in policy.insert(_node("c", 50))] == ["a"]
    assert policy.weight == 90
    assert [v.key for v in policy.insert(_node("d", 100))] == ["b", "c"]


def test_the_sketch_counts_saturates_and_ages() -> None:
    sketch = FrequencySketch(capacity=1000)
    for _ in range(5):
        sketch.increment("hot")
    sketch.increment("warm")
    assert sketch.estimate("hot") >= 5
    assert sketch.estimate("warm") >= 1
    assert sketch.estimate("cold") <= 1
    for _ in range(100):
        sketch.increment("hot")
    assert sketch.estimate("hot") == 15
    sketch.age()
    assert sketch.estimate("hot") == 7


def test_the_sketch_ages_by_itself_after_ten_times_its_capacity() -> None:
    sketch = FrequencySketch(capacity=16)
    for _ in range(10):
        sketch.increment("hot")
    for i in range(200):
        sketch.increment(f"noise-{i}")
    assert sketch.estimate("hot") < 10


def test_tinylfu_keeps_popular_entries_through_a_scan() -> None:
    size = 100
    tiny = TinyLfuPolicy(max_entries=size, max_weight=None)
    lru = LruPolicy(max_entries=size, max_weight=None)
    for policy in (tiny, lru):
        live: dict[str, Node] = {}
        for round_ in range(20):
            for i in range(50):  # the popular set, read often, one write in between keeps reads recorded
                key = f"hot-{i}"
                node = live.get(key)
                if node is None:
                    node = live[key] = _node(key)
                    for victim in policy.insert(node):
                        live.pop(victim.key, None)
                else:
                    policy.touch(node)
            scan = _node(f"scan-{round_}")
            live[scan.key] = scan
            for victim in policy.insert(scan):
                live.pop(victim.key, None)
        for i in range(500):  # a scan of one-off keys
            node = _node(f"once-{i}")
            live[node.key] = node
            for victim in policy.insert(node):
                live.pop(victim.key, None)
        hot_left = sum(1 for k in live if k.startswith("hot-"))
        if policy is tiny:
            assert hot_left >= 45, "W-TinyLFU keeps the popular keys"
        else:
            assert hot_left == 0, "LRU loses them all to the scan"


def test_tinylfu_admits_a_newcomer_only_if_more_popular_than_the_victim() -> None:
    policy = TinyLfuPolicy(max_entries=10, max_weight=None)
    nodes = [_node(f"k{i}") for i in range(10)]
    for node in nodes:
        policy.insert(node)
    for node in nodes:
        for _ in range(3):
            policy.touch(node)
    policy.drain()
    evicted = []
    for i in range(5):
        evicted += policy.insert(_node(f"newcomer-{i}"))
    main_region = {f"k{i}" for i in range(9)}  # k9 was still in the 1-entry window
    assert not main_region & {v.key for v in evicted}, "one-off keys do not displace popular ones"
    assert policy.count == 10


def test_tinylfu_bounds_entries_and_bytes() -> None:
    policy = TinyLfuPolicy(max_entries=None, max_weight=1000, expected_entries=50)
    rng = random.Random(1)
    live: dict[str, Node] = {}
    for i in range(2000):
        node = _node(f"k{rng.randint(0, 300)}-{i}", weight=rng.randint(1, 90))
        live[node.key] = node
        for victim in policy.insert(node):
            del live[victim.key]
        assert policy.weight <= 1000
        assert policy.weight == sum(n.weight for n in live.values())
        assert policy.count == len(live)


# --- the memory cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
async def test_the_cache_stays_within_max_size_and_counts_evictions(policy: Any) -> None:
    cache = MemoryCache(max_size=50, policy=policy)
    for i in range(200):
        await cache.set(f"k{i}", i)
    stats = cache.stats()
    assert stats.entries == 50
    assert stats.evictions == 150
    assert len(await cache.get_many(f"k{i}" for i in range(200))) == 50


async def test_the_cache_stays_within_max_bytes() -> None:
    cache = MemoryCache(max_size=None, max_bytes=20_000, policy="lru")
    for i in range(100):
        await cache.set(f"k{i}", "x" * 1000)
    stats = cache.stats()
    assert stats.size_bytes is not None
    assert stats.size_bytes <= 20_000
    assert 5 < (stats.entries or 0) < 20
    assert await cache.get("k99") == "x" * 1000


async def test_a_value_larger_than_max_bytes_is_not_stored_and_replaces_nothing() -> None:
    cache = MemoryCache(max_bytes=5_000)
    await cache.set("k", "small")
    await cache.set("k", "x" * 10_000)
    assert await cache.get("k", "miss") == "miss", "the old value must not survive a failed replacement"
    assert cache.stats().entries == 0


async def test_expired_entries_are_dropped_when_read_and_by_the_write_sweep() -> None:
    clock = Clock()
    cache = MemoryCache(clock=clock, max_size=None)
    for i in range(100):
        await cache.set(f"short-{i}", i, ttl=1)
    clock.now += 2
    for i in range(400):
        await cache.set(f"long-{i}", i, ttl=100)
    stats = cache.stats()
    assert stats.expirations > 90, "writes sweep expired entries nobody reads"
    assert (stats.entries or 0) < 410


async def test_object_store_returns_the_stored_object_and_bytes_store_a_copy() -> None:
    objects = MemoryCache()
    copies = MemoryCache(store="bytes")
    for cache in (objects, copies):
        value = {"items": [1]}
        await cache.set("k", value)
        (await cache.get("k"))["items"].append(2)
    assert await objects.get("k") == {"items": [1, 2]}, "documented: do not mutate what you get"
    assert await copies.get("k") == {"items": [1]}


async def test_bytes_store_refuses_values_the_codec_cannot_encode() -> None:
    with pytest.raises(CodecError):
        await MemoryCache(store="bytes").set("k", {1, 2})
    await MemoryCache().set("k", {1, 2})  # the object store keeps anything


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_size": 0}, "max_size"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"max_size": True}, "max_size"),
        ({"policy": "lfu"}, "policy"),
        ({"store": "json"}, "store"),
        ({"namespace": "a:b"}, "namespace"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_are_config_errors_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MemoryCache(**options)


async def test_an_overflowing_counter_raises_conflict() -> None:
    from mainspring.errors import ConflictError

    cache = MemoryCache()
    await cache.incr("n", 2**63 - 1)
    with pytest.raises(ConflictError, match="64-bit"):
        await cache.incr("n")
    assert await cache.get("n") == 2**63 - 1


async def test_no_task_or_thread_is_started_by_construction() -> None:
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    MemoryCache()
    assert len(asyncio.all_tasks()) == tasks_before
    assert threading.active_count() == threads_before


# --- the sync surface -------------------------------------------------------------------------------


def test_the_sync_surface_works_without_an_event_loop() -> None:
    cache = MemoryCache().sync
    cache.set("a", 1, ttl=10, tags=["t"])
    assert cache.get("a") == 1
    assert cache.exists("a")
    assert cache.incr("n", 3) == 3
    assert cache.get_many(["a", "n", "x"]) == {"a": 1, "n": 3}
    cache.invalidate_tags("t")
    assert cache.get("a") is None
    assert cache.get_or_set("b", lambda: "loaded") == "loaded"
    assert cache.ttl("b") == pytest.approx(300, abs=1)
    assert cache.expire("b", 5)
    assert cache.delete("b")
    cache.set_many({"p:1": 1, "p:2": 2})
    assert cache.delete_many(["p:1"]) == 1
    assert cache.clear("p:") == 1


def test_sync_get_or_set_runs_one_loader_across_threads() -> None:
    cache = MemoryCache().sync
    calls = 0
    started = threading.Barrier(8)

    def loader() -> str:
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        return "value"

    results: list[str] = []

    def worker() -> None:
        started.wait()
        results.append(cache.get_or_set("k", loader))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["value"] * 8
    assert calls == 1


def test_sync_get_or_set_propagates_a_loader_error_and_serves_stale_when_allowed() -> None:
    clock = Clock()
    cache = MemoryCache(clock=clock, stale_ttl=60).sync
    with pytest.raises(KeyError):
        cache.get_or_set("k", _raise(KeyError("nope")))
    assert cache.get_or_set("k", lambda: "v1", ttl=10) == "v1"
    clock.now += 20
    assert cache.get_or_set("k", _raise(KeyError("nope")), ttl=10) == "v1"


def test_the_sync_surface_shares_data_with_the_async_one() -> None:
    memory = MemoryCache()
    memory.sync.set("k", "from sync")
    assert asyncio.run(memory.get("k")) == "from sync"


def _raise(exc: Exception) -> Any:
    def loader() -> Any:
        raise exc

    return loader
