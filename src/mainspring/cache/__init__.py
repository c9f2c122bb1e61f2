"""Caching: an in-memory cache now (Redis and multi-level to come), one async contract for all.

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
from mainspring.cache._factory import create_cache
from mainspring.cache._keys import KeySpace, canonical, function_key
from mainspring.cache._options import CacheOptions
from mainspring.cache._protocols import Cache, SupportsSync, SyncCache
from mainspring.cache._settings import cache_options
from mainspring.cache._stats import CacheHealth, CacheStats
from mainspring.cache.base import BaseCache, BytesCache
from mainspring.cache.memory import MemoryCache
from mainspring.config._sections import CacheSettings

__all__ = [
    "BaseCache",
    "BytesCache",
    "Cache",
    "CacheBackendError",
    "CacheHealth",
    "CacheLoaderTimeoutError",
    "CacheOptions",
    "CacheSettings",
    "CacheSource",
    "CacheStats",
    "Codec",
    "CodecError",
    "Entry",
    "JsonCodec",
    "KeySpace",
    "MemoryCache",
    "MsgpackCodec",
    "NoCacheError",
    "PickleCodec",
    "Serializer",
    "SupportsSync",
    "SyncCache",
    "cache_options",
    "cached",
    "canonical",
    "create_cache",
    "function_key",
    "get_default_cache",
    "invalidate",
    "set_default_cache",
]
