"""Caching: memory, Redis and multi-level caches behind one async contract.

::

    from mainspring.cache import cached, create_cache

    cache = create_cache("memory://?max_size=10000&policy=tinylfu")

    user = await cache.get_or_set(f"user:{user_id}", lambda: load_user(user_id), ttl=60, tags=["users"])
    await cache.invalidate_tags("users")


    @cached(ttl=60, key="user:{user_id}", tags=["user:{user_id}"], cache=cache)
    async def get_user(user_id: int) -> dict[str, object]: ...

A cached ``None`` is distinct from a miss (negative caching); ``get_or_set`` runs one loader per key
whatever the concurrency, can serve a stale value when the loader fails, and can refresh hot entries
early in the background. See ``docs/cache.md``.
"""

from typing import TYPE_CHECKING, Any

from mainspring.cache._codec import Codec, CodecError, Entry, JsonCodec, MsgpackCodec, PickleCodec, Serializer
from mainspring.cache._decorators import (
    CacheSource,
    NoCacheError,
    cached,
    get_default_cache,
    invalidate,
    set_default_cache,
)
from mainspring.cache._errors import CacheBackendError, CacheLoaderTimeoutError
from mainspring.cache._events import EventInvalidator
from mainspring.cache._factory import create_cache
from mainspring.cache._keys import KeySpace, canonical, function_key
from mainspring.cache._options import CacheOptions
from mainspring.cache._protocols import Cache, SupportsSync, SyncCache
from mainspring.cache._settings import cache_options
from mainspring.cache._stats import CacheHealth, CacheStats
from mainspring.cache.base import BaseCache, BytesCache
from mainspring.cache.memory import MemoryCache
from mainspring.cache.multilevel import MultiLevelCache
from mainspring.cache.redis import RedisCache, SyncRedisCache
from mainspring.cache.strategies import CacheStrategies, MemoryWriteQueue, RedisWriteQueue, WriteBehindStats
from mainspring.cache.warming import CacheReloader, CacheWarmer, WarmingStats
from mainspring.config._sections import CacheSettings

if TYPE_CHECKING:
    from mainspring.cache.query import CacheMissError, QueryCache, QueryCacheMode

__all__ = [
    "BaseCache",
    "BytesCache",
    "Cache",
    "CacheBackendError",
    "CacheHealth",
    "CacheLoaderTimeoutError",
    "CacheMissError",
    "CacheOptions",
    "CacheReloader",
    "CacheSettings",
    "CacheSource",
    "CacheStats",
    "CacheStrategies",
    "CacheWarmer",
    "Codec",
    "CodecError",
    "Entry",
    "EventInvalidator",
    "JsonCodec",
    "KeySpace",
    "MemoryCache",
    "MemoryWriteQueue",
    "MsgpackCodec",
    "MultiLevelCache",
    "NoCacheError",
    "PickleCodec",
    "QueryCache",
    "QueryCacheMode",
    "RedisCache",
    "RedisWriteQueue",
    "Serializer",
    "SupportsSync",
    "SyncCache",
    "SyncRedisCache",
    "WarmingStats",
    "WriteBehindStats",
    "cache_options",
    "cached",
    "canonical",
    "create_cache",
    "function_key",
    "get_default_cache",
    "invalidate",
    "set_default_cache",
]

# The query cache needs SQLAlchemy's ORM, which takes most of a second to import: load it on first use.
_QUERY_NAMES = frozenset({"CacheMissError", "QueryCache", "QueryCacheMode"})


def __getattr__(name: str) -> Any:
    """Import the query cache's names on first access."""
    if name in _QUERY_NAMES:
        from mainspring.cache import query

        return getattr(query, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
