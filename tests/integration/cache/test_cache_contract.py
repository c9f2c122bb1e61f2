"""The cache contract, run against every backend (see conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from mainspring.cache import BaseCache, CacheLoaderTimeoutError
from mainspring.errors import ConflictError, ValidationError
from mainspring.testing import capture_logs

Make = Callable[..., Any]


class FakeClock(Protocol):
    """The ``clock`` fixture (conftest): a clock the test moves by hand."""

    def advance(self, seconds: float) -> None: ...


# --- basic operations -------------------------------------------------------------------------------


async def test_get_returns_default_on_a_miss_and_the_value_on_a_hit(cache: BaseCache[Any]) -> None:
    assert await cache.get("user:1") is None
    assert await cache.get("user:1", "fallback") == "fallback"
    await cache.set("user:1", {"name": "Ada", "roles": ["admin"], "age": 36, "score": 1.5, "ok": True})
    assert await cache.get("user:1", "fallback") == {
        "name": "Ada",
        "roles": ["admin"],
        "age": 36,
        "score": 1.5,
        "ok": True,
    }


@pytest.mark.parametrize(
    "value",
    ["text", "", 0, -7, 2**62, 3.25, True, False, [1, "a", None], {"nested": {"x": [1, 2]}}, b"\x00\xff"],
)
async def test_values_round_trip(cache: BaseCache[Any], value: object) -> None:
    await cache.set("k", value)
    got = await cache.get("k", "missing")
    assert got == value
    assert type(got) is type(value)


async def test_a_cached_none_is_a_hit_distinct_from_a_miss(cache: BaseCache[Any]) -> None:
    await cache.set("absent-user", None)
    assert await cache.get("absent-user", "fallback") is None
    assert await cache.exists("absent-user")
    assert await cache.get_many(["absent-user", "other"]) == {"absent-user": None}


async def test_none_without_ttl_lives_for_negative_ttl(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(negative_ttl=5, default_ttl=100)
    await cache.set("none", None)
    await cache.set("value", 1)
    clock.advance(5.5)
    assert await cache.get("none", "miss") == "miss"
    assert await cache.get("value") == 1


async def test_a_value_expires_after_its_ttl(cache: BaseCache[Any], clock: FakeClock) -> None:
    await cache.set("session", "abc", ttl=10)
    clock.advance(9.9)
    assert await cache.get("session") == "abc"
    clock.advance(0.2)
    assert await cache.get("session", "gone") == "gone"
    assert not await cache.exists("session")
    assert await cache.ttl("session") is None


async def test_default_ttl_applies_when_ttl_is_omitted(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(default_ttl=30)
    await cache.set("k", "v")
    assert await cache.ttl("k") == pytest.approx(30)
    clock.advance(31)
    assert await cache.get("k") is None


async def test_no_default_ttl_keeps_values_until_deleted(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(default_ttl=None)
    await cache.set("k", "v")
    clock.advance(10 * 365 * 86400)
    assert await cache.get("k") == "v"
    assert await cache.ttl("k") == math.inf


async def test_set_replaces_the_value_and_the_ttl(cache: BaseCache[Any], clock: FakeClock) -> None:
    await cache.set("k", "old", ttl=5)
    await cache.set("k", "new", ttl=50)
    clock.advance(10)
    assert await cache.get("k") == "new"


async def test_delete_says_whether_the_key_was_there(cache: BaseCache[Any]) -> None:
    await cache.set("k", 1)
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


async def test_many_operations(cache: BaseCache[Any]) -> None:
    await cache.set_many({"a": 1, "b": None, "c": "three"}, ttl=60)
    assert await cache.get_many(["c", "missing", "a", "b", "a"]) == {"c": "three", "a": 1, "b": None}
    assert list(await cache.get_many(["c", "a"])) == ["c", "a"]
    assert await cache.delete_many(["a", "missing", "c"]) == 2
    assert await cache.get_many(["a", "b", "c"]) == {"b": None}
    assert await cache.get_many([]) == {}
    assert await cache.delete_many([]) == 0


async def test_clear_removes_only_keys_with_the_prefix(cache: BaseCache[Any]) -> None:
    await cache.set_many({"user:1": 1, "user:2": 2, "order:1": 3})
    assert await cache.clear("user:") == 2
    assert await cache.get_many(["user:1", "user:2", "order:1"]) == {"order:1": 3}
    assert await cache.clear() == 1
    assert await cache.get("order:1") is None


async def test_caches_with_other_namespaces_or_versions_do_not_see_each_other(make_cache: Make) -> None:
    v1 = await make_cache(namespace="orders", schema_version="v1")
    v2 = await make_cache(namespace="orders", schema_version="v2")
    other = await make_cache(namespace="billing", schema_version="v1")
    await v1.set("k", "v1")
    await v2.set("k", "v2")
    await other.set("k", "billing")
    assert [await c.get("k") for c in (v1, v2, other)] == ["v1", "v2", "billing"]


async def test_long_keys_are_shortened_but_stay_distinct(cache: BaseCache[Any]) -> None:
    head = "x" * 400
    await cache.set(head + "a", 1)
    await cache.set(head + "b", 2)
    assert await cache.get(head + "a") == 1
    assert await cache.get(head + "b") == 2
    assert await cache.clear("x" * 100) == 2


@pytest.mark.parametrize("key", ["", 42, None, b"bytes", ["list"]])
async def test_a_bad_key_raises_validation_error(cache: BaseCache[Any], key: Any) -> None:
    with pytest.raises(ValidationError, match="key"):
        await cache.get(key)
    with pytest.raises(ValidationError, match="key"):
        await cache.set(key, 1)
    with pytest.raises(ValidationError, match="key"):
        await cache.get_or_set(key, _const(1))


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, True, "10"])
async def test_a_bad_ttl_raises_validation_error(cache: BaseCache[Any], ttl: Any) -> None:
    with pytest.raises(ValidationError, match="ttl"):
        await cache.set("k", 1, ttl=ttl)
    with pytest.raises(ValidationError, match="ttl"):
        await cache.expire("k", ttl)
    with pytest.raises(ValidationError, match="ttl"):
        await cache.get_or_set("k", _const(1), ttl=ttl)


async def test_tags_must_be_a_collection_of_strings(cache: BaseCache[Any]) -> None:
    with pytest.raises(ValidationError, match="not one string"):
        await cache.set("k", 1, tags="user:1")
    with pytest.raises(ValidationError, match="tag"):
        await cache.set("k", 1, tags=[""])


# --- counters, expire, ttl --------------------------------------------------------------------------


async def test_incr_starts_at_zero_and_adds(cache: BaseCache[Any]) -> None:
    assert await cache.incr("hits") == 1
    assert await cache.incr("hits", 10) == 11
    assert await cache.incr("hits", -12) == -1
    assert await cache.get("hits") == -1


async def test_incr_is_atomic_under_concurrency(cache: BaseCache[Any]) -> None:
    results = await asyncio.gather(*(cache.incr("counter") for _ in range(1000)))
    assert sorted(results) == list(range(1, 1001))
    assert await cache.get("counter") == 1000


async def test_incr_works_on_an_int_set_before(cache: BaseCache[Any]) -> None:
    await cache.set("n", 41)
    assert await cache.incr("n") == 42


@pytest.mark.parametrize("value", ["text", 1.5, [1], None])
async def test_incr_on_a_value_that_is_not_a_counter_raises_conflict(
    cache: BaseCache[Any], value: object
) -> None:
    await cache.set("k", value)
    with pytest.raises(ConflictError, match="not a counter"):
        await cache.incr("k")
    assert await cache.get("k", "gone") == value


async def test_incr_rejects_a_step_that_is_not_an_integer(cache: BaseCache[Any]) -> None:
    with pytest.raises(ValidationError, match="integer"):
        await cache.incr("k", 1.5)  # type: ignore[arg-type]


async def test_incr_keeps_the_ttl_and_expire_sets_one(cache: BaseCache[Any], clock: FakeClock) -> None:
    await cache.incr("rate")
    assert await cache.ttl("rate") == math.inf
    assert await cache.expire("rate", 60) is True
    await cache.incr("rate")
    remaining = await cache.ttl("rate")
    assert remaining is not None
    assert 0 < remaining <= 60


async def test_expire_gives_a_new_ttl_and_ttl_reports_it(cache: BaseCache[Any], clock: FakeClock) -> None:
    await cache.set("k", "v", ttl=10)
    assert await cache.ttl("k") == pytest.approx(10)
    assert await cache.expire("k", 100) is True
    clock.advance(50)
    assert await cache.get("k") == "v"
    assert await cache.ttl("k") == pytest.approx(50)
    assert await cache.expire("missing", 10) is False
    assert await cache.ttl("missing") is None


# --- tags -------------------------------------------------------------------------------------------


async def test_invalidating_a_tag_drops_every_entry_carrying_it_and_nothing_else(
    cache: BaseCache[Any],
) -> None:
    await cache.set("user:1", "ada", tags=["user:1", "users"])
    await cache.set("user:2", "bob", tags=["user:2", "users"])
    await cache.set("orders:1", ["o1"], tags=["user:1"])
    await cache.set("plain", "p")
    await cache.invalidate_tags("user:1")
    assert await cache.get_many(["user:1", "user:2", "orders:1", "plain"]) == {"user:2": "bob", "plain": "p"}
    await cache.invalidate_tags("users", "unknown-tag")
    assert await cache.get_many(["user:1", "user:2", "plain"]) == {"plain": "p"}


async def test_an_entry_written_after_invalidation_is_valid(cache: BaseCache[Any]) -> None:
    await cache.set("k", 1, tags=["t"])
    await cache.invalidate_tags("t")
    await cache.set("k", 2, tags=["t"])
    assert await cache.get("k") == 2
    assert await cache.invalidate_tags() is None


async def test_a_tag_invalidated_while_loading_invalidates_the_loaded_value(cache: BaseCache[Any]) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_loader() -> str:
        started.set()
        await release.wait()
        return "built from old data"

    load = asyncio.create_task(cache.get_or_set("report", slow_loader, tags=["reports"]))
    await started.wait()
    await cache.invalidate_tags("reports")
    release.set()
    assert await load == "built from old data"
    assert await cache.get("report", "miss") == "miss"


# --- get_or_set: stampede, negative caching, fail-safe, timeouts ------------------------------------


async def test_a_thousand_concurrent_misses_run_the_loader_once(cache: BaseCache[Any]) -> None:
    calls = 0

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return {"value": 7}

    results = await asyncio.gather(*(cache.get_or_set("hot", loader, ttl=60) for _ in range(1000)))
    assert calls == 1
    assert all(r == {"value": 7} for r in results)
    assert await cache.get_or_set("hot", loader) == {"value": 7}
    assert calls == 1
    stats = cache.stats()
    assert stats.loads == 1
    assert stats.misses == 1000
    assert stats.hits == 1


async def test_lock_true_also_loads_once(cache: BaseCache[Any]) -> None:
    calls = 0

    async def loader() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 1

    await asyncio.gather(*(cache.get_or_set("k", loader, lock=True) for _ in range(200)))
    assert calls == 1


async def test_get_or_set_caches_none_for_negative_ttl(cache: BaseCache[Any], clock: FakeClock) -> None:
    calls = 0

    async def lookup() -> None:
        nonlocal calls
        calls += 1

    assert await cache.get_or_set("missing-user", lookup, negative_ttl=5) is None
    assert await cache.get_or_set("missing-user", lookup, negative_ttl=5) is None
    assert calls == 1
    clock.advance(6)
    assert await cache.get_or_set("missing-user", lookup, negative_ttl=5) is None
    assert calls == 2


async def test_cache_none_false_does_not_cache_a_none_result(cache: BaseCache[Any]) -> None:
    calls = 0

    async def lookup() -> None:
        nonlocal calls
        calls += 1

    await cache.get_or_set("k", lookup, cache_none=False)
    await cache.get_or_set("k", lookup, cache_none=False)
    assert calls == 2
    assert not await cache.exists("k")


async def test_a_loader_error_reaches_every_waiter_and_nothing_is_cached(cache: BaseCache[Any]) -> None:
    calls = 0

    async def broken() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise LookupError("database down")

    results = await asyncio.gather(
        *(cache.get_or_set("k", broken) for _ in range(50)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results)
    assert not await cache.exists("k")
    assert cache.stats().load_errors == 1
    assert await cache.get_or_set("k", _const("recovered")) == "recovered"


async def test_a_stale_value_stands_in_when_the_loader_fails(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(stale_ttl=60)
    await cache.get_or_set("price", _const(100), ttl=10)
    clock.advance(30)
    assert await cache.get("price", "expired") == "expired", "a stale value is not served by get"
    with capture_logs() as logs:
        assert await cache.get_or_set("price", _failing(ConnectionError("upstream down")), ttl=10) == 100
    assert cache.stats().stale_served == 1
    assert any(r["event"] == "cache loader failed; serving the stale value" for r in logs)
    stale_log = next(r for r in logs if r["event"].startswith("cache loader failed"))
    assert stale_log["key"] == "price"
    assert "upstream down" in stale_log["error"]


async def test_a_value_past_its_stale_window_is_not_served(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(stale_ttl=60)
    await cache.get_or_set("price", _const(100), ttl=10)
    clock.advance(71)
    with pytest.raises(ConnectionError):
        await cache.get_or_set("price", _failing(ConnectionError("upstream down")), ttl=10)
    assert cache.stats().stale_served == 0


async def test_per_call_stale_ttl_enables_the_fail_safe(cache: BaseCache[Any], clock: FakeClock) -> None:
    await cache.get_or_set("k", _const("v1"), ttl=10, stale_ttl=100)
    clock.advance(50)
    assert await cache.get_or_set("k", _failing(RuntimeError("boom")), ttl=10, stale_ttl=100) == "v1"
    assert await cache.get_or_set("k", _const("v2"), ttl=10, stale_ttl=100) == "v2"


async def test_a_slow_loader_times_out(cache: BaseCache[Any]) -> None:
    with pytest.raises(CacheLoaderTimeoutError, match="timed out"):
        await cache.get_or_set("slow", _sleeping(5, "late"), loader_timeout=0.05)
    assert cache.stats().load_timeouts == 1
    assert not await cache.exists("slow")


async def test_a_timed_out_loader_falls_back_to_the_stale_value(make_cache: Make, clock: FakeClock) -> None:
    cache = await make_cache(stale_ttl=60, loader_timeout=0.05)
    await cache.get_or_set("k", _const("old"), ttl=1)
    clock.advance(2)
    assert await cache.get_or_set("k", _sleeping(5, "late"), ttl=1) == "old"
    assert cache.stats().stale_served == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_load(cache: BaseCache[Any]) -> None:
    release = asyncio.Event()
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "done"

    first = asyncio.create_task(cache.get_or_set("k", loader))
    second = asyncio.create_task(cache.get_or_set("k", loader))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert calls == 1
    assert await cache.get("k") == "done"


async def test_a_sync_loader_result_is_accepted(cache: BaseCache[Any]) -> None:
    assert await cache.get_or_set("k", lambda: "plain") == "plain"  # type: ignore[arg-type,return-value]


# --- early refresh ----------------------------------------------------------------------------------


async def test_refresh_ahead_reloads_in_the_background_before_expiry(
    cache: BaseCache[Any], clock: FakeClock
) -> None:
    versions = iter(["v1", "v2"])

    async def loader() -> str:
        return next(versions)

    assert await cache.get_or_set("k", loader, ttl=100, refresh_ahead=0.2) == "v1"
    clock.advance(50)
    assert await cache.get_or_set("k", loader, ttl=100, refresh_ahead=0.2) == "v1"
    assert cache.stats().refreshes == 0
    clock.advance(35)  # 15 s of 100 left: below the 20 % mark
    assert await cache.get_or_set("k", loader, ttl=100, refresh_ahead=0.2) == "v1", "served at once"
    await cache.stop()  # waits for the background refresh
    assert cache.stats().refreshes == 1
    assert await cache.get("k") == "v2"
    assert await cache.ttl("k") == pytest.approx(100)


async def test_xfetch_refreshes_early_with_growing_probability(make_cache: Make, clock: FakeClock) -> None:
    rng = random.Random(4)
    cache = await make_cache(xfetch_beta=1.0, rng=rng)
    calls = 0

    async def loader() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)  # delta: what the loader costs
        return calls

    await cache.get_or_set("k", loader, ttl=60)
    for _ in range(50):  # far from expiry: -delta*ln(u) is almost never 60 s
        await cache.get_or_set("k", loader, ttl=60)
    assert calls == 1
    clock.advance(60 - 0.001)
    for _ in range(50):
        await cache.get_or_set("k", loader, ttl=60)
        await asyncio.sleep(0)
    await cache.stop()
    assert calls == 2, "near expiry one refresh ran, and only one"


async def test_a_failed_background_refresh_keeps_the_value_and_is_counted(
    cache: BaseCache[Any], clock: FakeClock
) -> None:
    await cache.get_or_set("k", _const("v1"), ttl=100)
    clock.advance(90)
    with capture_logs() as logs:
        assert await cache.get_or_set("k", _failing(RuntimeError("boom")), ttl=100, refresh_ahead=0.5) == "v1"
        await cache.stop()
    assert cache.stats().refresh_errors == 1
    assert await cache.get("k") == "v1"
    assert any("refresh" in r["event"] for r in logs)


async def test_a_background_refresh_with_lock_still_reloads(cache: BaseCache[Any], clock: FakeClock) -> None:
    versions = iter(["v1", "v2"])

    async def loader() -> str:
        return next(versions)

    await cache.get_or_set("k", loader, ttl=100, lock=True)
    clock.advance(90)
    assert await cache.get_or_set("k", loader, ttl=100, lock=True, refresh_ahead=0.5) == "v1"
    await cache.stop()
    assert await cache.get("k") == "v2"


# --- robustness, stats, health ----------------------------------------------------------------------


async def test_an_undecodable_entry_is_a_counted_miss_never_an_exception(cache: BaseCache[Any]) -> None:
    key = cache.keys.entry("corrupt")
    await cache._set_raw([(key, b"\xff\x10garbage")], None)
    with capture_logs() as logs:
        assert await cache.get("corrupt", "miss") == "miss"
        assert await cache.get_or_set("corrupt", _const("rebuilt")) == "rebuilt"
    assert cache.stats().undecodable == 2, "one per read of the bad entry"
    assert any(r["event"] == "undecodable cache entry read as a miss" for r in logs)
    assert await cache.get("corrupt") == "rebuilt"


async def test_stats_count_reads_and_the_hit_ratio(cache: BaseCache[Any]) -> None:
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.sets) == (2, 1, 1)
    assert stats.hit_ratio == pytest.approx(2 / 3)


async def test_health_reports_a_healthy_backend(cache: BaseCache[Any]) -> None:
    health = await cache.health()
    assert health.healthy
    assert health.detail == "ok"
    assert health.latency is not None
    assert health.stats.backend == cache.backend_name


# --- helpers ----------------------------------------------------------------------------------------


def _const(value: Any) -> Callable[[], Any]:
    async def loader() -> Any:
        return value

    return loader


def _failing(exc: Exception) -> Callable[[], Any]:
    async def loader() -> Any:
        raise exc

    return loader


def _sleeping(seconds: float, value: Any) -> Callable[[], Any]:
    async def loader() -> Any:
        await asyncio.sleep(seconds)
        return value

    return loader
