"""``create_cache``: a cache from a URL or from :class:`~mainspring.config.CacheSettings`.

The scheme picks the backend through :data:`_BUILDERS`; adding a backend is one entry there. Options
come from the settings, and the URL's query string overrides them (``memory://?max_size=10000``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pydantic

from mainspring.cache._protocols import Cache
from mainspring.cache.memory import MemoryCache
from mainspring.cache.multilevel import MultiLevelCache
from mainspring.cache.redis import RedisCache
from mainspring.config._safety import mask_url_password
from mainspring.config._sections import CacheSettings, cache_url_scheme
from mainspring.errors import ConfigError, ConfigProblem

__all__ = ["create_cache", "settings_from_url"]

#: Settings fields the URL query may not carry: the URL itself, and the secret (URLs end up in logs).
_NOT_IN_QUERY = frozenset({"url", "pickle_key"})
_NONE_WORDS = frozenset({"", "none", "null"})

Builder = Callable[[CacheSettings, dict[str, str]], Cache]


def _problems(exc: pydantic.ValidationError) -> list[ConfigProblem]:
    return [
        ConfigProblem("cache." + ".".join(str(p) for p in error["loc"]), error["msg"])
        for error in exc.errors(include_input=False)
    ]


def settings_from_url(url: str, base: CacheSettings | None = None) -> tuple[CacheSettings, dict[str, str]]:
    """Return ``base`` (default settings if omitted) with ``url`` and the options in its query applied.

    Query keys that are not settings fields are returned apart, for the backend to judge.
    """
    fields = set(CacheSettings.model_fields) - _NOT_IN_QUERY
    data: dict[str, Any] = (base or CacheSettings()).model_dump()
    data["url"] = url
    extra: dict[str, str] = {}
    query = urlsplit(url.strip()).query
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _NOT_IN_QUERY:
            raise ConfigError(
                "invalid cache URL",
                problems=[ConfigProblem(f"cache.url?{name}", "set this in the settings, not in the URL")],
            )
        if name in fields:
            data[name] = None if value.lower() in _NONE_WORDS else value
        else:
            extra[name] = value
    try:
        return CacheSettings.model_validate(data), extra
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"invalid cache settings for {mask_url_password(url)}", problems=_problems(exc)
        ) from None


def _memory(settings: CacheSettings, extra: dict[str, str]) -> Cache:
    parts = urlsplit(settings.url)
    problems = [
        ConfigProblem(f"cache.url?{name}", "not an option of memory://", repr(value))
        for name, value in extra.items()
    ]
    if parts.netloc or parts.path.strip("/"):
        problems.append(
            ConfigProblem("cache.url", "memory:// takes no host or path, only ?options", settings.url)
        )
    if problems:
        raise ConfigError("invalid memory cache URL", problems=problems)
    return MemoryCache.from_settings(settings)


_BUILDERS: dict[str, Builder] = {
    "memory": _memory,
    "redis": RedisCache.from_settings,
    "rediss": RedisCache.from_settings,
    "memory+redis": MultiLevelCache.from_settings,
    "memory+rediss": MultiLevelCache.from_settings,
    "redis+sentinel": RedisCache.from_settings,
    "redis+cluster": RedisCache.from_settings,
}


def create_cache(source: str | CacheSettings, /) -> Cache:
    """Build the cache a URL or a :class:`~mainspring.config.CacheSettings` describes; nothing connects yet.

    ``memory://?max_size=10000&policy=tinylfu`` gives a :class:`MemoryCache`. Raises ``ConfigError``
    listing every problem (unknown scheme or option, bad value) and ``MissingDependencyError`` when
    the backend's extra is not installed. Call ``await cache.start()`` (or ``async with``) before use.
    """
    if isinstance(source, CacheSettings):
        settings, extra = settings_from_url(source.url, source)
    elif isinstance(source, str):
        try:
            cache_url_scheme(source)
        except ValueError as exc:
            raise ConfigError(
                "invalid cache URL",
                problems=[ConfigProblem("cache.url", str(exc), mask_url_password(source))],
            ) from None
        settings, extra = settings_from_url(source)
    else:
        raise ConfigError(
            "create_cache takes a URL string or CacheSettings",
            problems=[ConfigProblem("cache", "expected a URL or CacheSettings", type(source).__name__)],
        )
    return _BUILDERS[cache_url_scheme(settings.url)](settings, extra)
