"""``create_cache`` and ``CacheSettings``: URLs, options, errors, production rules."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from mainspring.cache import MemoryCache, MsgpackCodec, create_cache
from mainspring.config import CacheSettings, Settings
from mainspring.errors import ConfigError


def test_a_memory_url_with_options_builds_a_memory_cache() -> None:
    cache = create_cache("memory://?max_size=123&policy=lru&store=bytes&default_ttl=none&namespace=shop")
    assert isinstance(cache, MemoryCache)
    assert cache.policy_name == "lru"
    assert cache.store == "bytes"
    assert cache.keys.namespace == "shop"
    assert cache._policy.max_entries == 123
    assert cache._default_ttl is None


def test_settings_build_the_cache_and_the_query_overrides_them() -> None:
    settings = CacheSettings(url="memory://?max_size=5", max_size=1000, codec="msgpack", compression="zstd")
    cache = create_cache(settings)
    assert isinstance(cache, MemoryCache)
    assert cache._policy.max_entries == 5
    assert cache.serializer.codec_name == MsgpackCodec.name
    assert cache.serializer.compression_name == "zstd"


def test_the_defaults_make_a_bounded_tinylfu_memory_cache() -> None:
    cache = create_cache(Settings().cache)
    assert isinstance(cache, MemoryCache)
    assert cache.policy_name == "tinylfu"
    assert cache._policy.max_entries == 10_000


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://localhost", "unsupported cache URL"),
        ("localhost:6379", "unsupported cache URL"),
        ("memory://?max_size=zero", "max_size"),
        ("memory://?policy=fifo", "policy"),
        ("memory://?colour=blue", "colour"),
        ("memory://somehost", "no host"),
        ("memory://?pickle_key=secret", "not in the URL"),
        ("memory://?url=redis://x", "not in the URL"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_cache(url)


@pytest.mark.parametrize("url", ["redis://:pw@localhost:6379/0", "rediss://h"])
def test_redis_urls_build_a_redis_cache_that_does_not_show_the_password(url: str) -> None:
    from mainspring.cache import RedisCache

    cache = create_cache(url)
    assert isinstance(cache, RedisCache)
    assert "pw" not in repr(cache)


def test_create_cache_rejects_other_types() -> None:
    with pytest.raises(ConfigError, match="URL string or CacheSettings"):
        create_cache(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "ftp://x"},
        {"namespace": "a:b"},
        {"schema_version": ""},
        {"default_ttl": 0},
        {"refresh_ahead": 1.5},
        {"codec": "pickle"},
        {"codec": "pickle", "pickle_key": "short"},
        {"max_key_length": 10},
        {"unknown": 1},
    ],
)
def test_cache_settings_reject_bad_values(fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        CacheSettings(**fields)


def test_the_pickle_codec_with_a_long_key_is_accepted_and_the_key_stays_secret() -> None:
    settings = CacheSettings(codec="pickle", pickle_key="p" * 40)
    assert "p" * 40 not in repr(settings)
    cache = create_cache(settings)
    assert cache.serializer.codec_name == "pickle"  # type: ignore[attr-defined]


def test_the_url_password_is_masked_in_the_repr() -> None:
    settings = CacheSettings(url="redis://user:hunter2@cache:6379/0")
    assert "hunter2" not in repr(settings)


def test_an_unbounded_memory_cache_is_a_production_problem() -> None:
    settings = Settings(profile="prod", cache=CacheSettings(max_size=None))
    problems = [p for p in settings.production_problems() if p.path.startswith("cache")]
    assert [p.path for p in problems] == ["cache.max_size"]
    assert Settings(profile="prod").cache.production_problems() == []
