"""``@cached`` and ``@invalidate`` on async and plain functions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from mainspring.cache import (
    MemoryCache,
    NoCacheError,
    cached,
    function_key,
    get_default_cache,
    invalidate,
    set_default_cache,
)
from mainspring.errors import ConfigError, ValidationError


@pytest.fixture
def default_cache() -> Iterator[MemoryCache]:
    cache = MemoryCache()
    set_default_cache(cache)
    yield cache
    set_default_cache(None)


async def test_an_async_function_is_called_once_per_arguments() -> None:
    cache = MemoryCache()
    calls: list[int] = []

    @cached(ttl=60, cache=cache)
    async def get_user(user_id: int, verbose: bool = False) -> dict[str, Any]:
        calls.append(user_id)
        await asyncio.sleep(0.01)
        return {"id": user_id}

    results = await asyncio.gather(*(get_user(1) for _ in range(100)))
    assert results == [{"id": 1}] * 100
    assert await get_user(user_id=1) == {"id": 1}
    assert await get_user(1, False) == {"id": 1}
    assert await get_user(2) == {"id": 2}
    assert calls == [1, 2]
    assert get_user.__name__ == "get_user"
    default_key = function_key(get_user, (1,), {})
    assert await cache.get(default_key) == {"id": 1}


def test_a_plain_function_is_cached_through_the_sync_surface() -> None:
    cache = MemoryCache()
    calls: list[int] = []

    @cached(ttl=60, key="square:{n}", cache=cache)
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert [square(3), square(3), square(n=3), square(4)] == [9, 9, 9, 16]
    assert calls == [3, 4]
    assert cache.sync.get("square:3") == 9


async def test_key_and_tag_templates_use_the_parameters(default_cache: MemoryCache) -> None:
    @cached(key="user:{user_id}:{fmt}", tags=["user:{user_id}", "users"])
    async def render(user_id: int, fmt: str = "json") -> str:
        return f"{user_id}/{fmt}"

    @invalidate(tags=["user:{user_id}"])
    async def rename(user_id: int, name: str) -> None:
        pass

    assert await render(7) == "7/json"
    assert await default_cache.get("user:7:json") == "7/json"
    await rename(7, "Ada")
    assert await default_cache.get("user:7:json") is None


async def test_invalidate_deletes_keys_only_after_success(default_cache: MemoryCache) -> None:
    @invalidate(keys=["order:{order_id}"])
    async def cancel(order_id: int, fail: bool = False) -> str:
        if fail:
            raise RuntimeError("refused")
        return "cancelled"

    await default_cache.set("order:1", "open")
    with pytest.raises(RuntimeError):
        await cancel(1, fail=True)
    assert await default_cache.get("order:1") == "open"
    assert await cancel(1) == "cancelled"
    assert await default_cache.get("order:1") is None


def test_invalidate_works_on_plain_functions(default_cache: MemoryCache) -> None:
    @invalidate(keys=lambda sku: [f"price:{sku}"], tags=lambda sku: ["prices"])
    def reprice(sku: str) -> None:
        pass

    default_cache.sync.set("price:A", 10)
    default_cache.sync.set("other", 1, tags=["prices"])
    reprice("A")
    assert default_cache.sync.get_many(["price:A", "other"]) == {}


async def test_a_callable_key_and_a_cache_provider(default_cache: MemoryCache) -> None:
    late = MemoryCache()

    @cached(key=lambda a, b: f"sum:{a + b}", cache=lambda: late)
    async def add(a: int, b: int) -> int:
        return a + b

    assert await add(1, 2) == 3
    assert await late.get("sum:3") == 3
    assert await default_cache.get("sum:3") is None


async def test_methods_share_results_across_instances_by_default() -> None:
    cache = MemoryCache()
    calls = 0

    class Prices:
        @cached(cache=cache)
        async def of(self, sku: str) -> int:
            nonlocal calls
            calls += 1
            return 10

    assert await Prices().of("A") == await Prices().of("A") == 10
    assert calls == 1


async def test_none_results_are_cached_unless_told_otherwise() -> None:
    cache = MemoryCache()
    calls = 0

    @cached(cache=cache, cache_none=False)
    async def find(name: str) -> None:
        nonlocal calls
        calls += 1

    await find("x")
    await find("x")
    assert calls == 2


async def test_without_any_cache_the_call_says_what_to_do() -> None:
    set_default_cache(None)

    @cached()
    async def f() -> int:
        return 1

    with pytest.raises(NoCacheError, match="set_default_cache"):
        await f()
    with pytest.raises(NoCacheError):
        get_default_cache()


def test_a_cache_without_sync_surface_cannot_serve_a_plain_function() -> None:
    class AsyncOnly:
        async def get_or_set(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("not reached")

    @cached(cache=AsyncOnly())  # type: ignore[arg-type]
    def f() -> int:
        return 1

    with pytest.raises(NoCacheError, match="synchronous surface"):
        f()


def test_a_template_naming_an_unknown_parameter_fails_at_decoration() -> None:
    with pytest.raises(ConfigError, match="usr_id"):

        @cached(key="user:{usr_id}", cache=MemoryCache())
        async def get_user(user_id: int) -> None: ...

    with pytest.raises(ConfigError, match="positional"):

        @invalidate(tags=["user:{}"], cache=MemoryCache())
        async def save(user_id: int) -> None: ...

    with pytest.raises(ConfigError, match="not one string"):
        cached(tags="user:{user_id}", cache=MemoryCache())(lambda user_id: None)  # type: ignore[arg-type]


async def test_arguments_that_cannot_be_keyed_raise_validation_error() -> None:
    @cached(cache=MemoryCache())
    async def f(thing: object) -> int:
        return 1

    with pytest.raises(ValidationError, match="__cache_key__"):
        await f(object())
