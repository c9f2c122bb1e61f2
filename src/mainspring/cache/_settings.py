"""Turning :class:`~mainspring.config.CacheSettings` into the options every cache takes."""

from __future__ import annotations

from mainspring.cache._codec import Serializer
from mainspring.cache._options import CacheOptions
from mainspring.config._sections import CacheSettings

__all__ = ["cache_options"]


def cache_options(settings: CacheSettings) -> CacheOptions:
    """Return the :class:`~mainspring.cache.base.CacheOptions` of ``settings`` (backend fields aside)."""
    pickle_key = settings.pickle_key.get_secret_value() if settings.pickle_key is not None else None
    return CacheOptions(
        namespace=settings.namespace,
        schema_version=settings.schema_version,
        default_ttl=settings.default_ttl,
        negative_ttl=settings.negative_ttl,
        stale_ttl=settings.stale_ttl,
        loader_timeout=settings.loader_timeout,
        tag_ttl=settings.tag_ttl,
        max_key_length=settings.max_key_length,
        xfetch_beta=settings.xfetch_beta,
        refresh_ahead=settings.refresh_ahead,
        serializer=Serializer(
            settings.codec,
            compression=settings.compression,
            compress_min_size=settings.compress_min_size,
            pickle_key=pickle_key,
        ),
    )
