"""The options every cache takes, checked once into a :class:`Tuning`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, cast

from mainspring.cache._codec import Serializer
from mainspring.cache._keys import DEFAULT_MAX_KEY_LENGTH, KeySpace
from mainspring.cache._loading import check_fraction, check_seconds
from mainspring.errors import ConfigError, ConfigProblem

__all__ = ["CacheOptions", "Tuning"]


class CacheOptions(TypedDict, total=False):
    """Options every cache takes (keyword arguments); ``CacheSettings`` holds the same ones.

    ``namespace``/``schema_version`` prefix every key (bump the version to drop every entry of an old
    shape); ``default_ttl`` applies when ``ttl`` is not given (``None``: no expiry); ``negative_ttl`` to
    a cached ``None``; ``stale_ttl`` is how long past its ttl a value is kept to be served when the
    loader fails (fail-safe; 0: off); ``loader_timeout`` bounds ``get_or_set`` loaders; ``tag_ttl`` is the
    life of a tag version; ``xfetch_beta``/``refresh_ahead`` turn on early background refresh;
    ``lock_ttl``/``lock_wait`` size the distributed lease of ``lock=True``; ``shutdown_timeout`` is how
    long ``stop()`` waits for background loads; ``clock`` and ``rng`` are injectable for tests.
    """

    namespace: str
    schema_version: str
    default_ttl: float | None
    negative_ttl: float
    stale_ttl: float
    loader_timeout: float | None
    tag_ttl: float
    max_key_length: int
    xfetch_beta: float | None
    refresh_ahead: float | None
    lock_ttl: float
    lock_wait: float | None
    shutdown_timeout: float
    serializer: Serializer
    clock: Callable[[], float]
    rng: random.Random


@dataclass(frozen=True, slots=True)
class Tuning:
    """The checked options of one cache (defaults filled in)."""

    keys: KeySpace
    default_ttl: float | None
    negative_ttl: float
    stale_ttl: float
    loader_timeout: float | None
    tag_ttl: float
    xfetch_beta: float
    refresh_ahead: float
    lock_ttl: float
    lock_wait: float
    shutdown_timeout: float
    serializer: Serializer
    clock: Callable[[], float] | None
    rng: random.Random

    @classmethod
    def from_options(cls, options: CacheOptions) -> Tuning:
        """Check ``options``; ``ConfigError``/``ValidationError`` name a bad one."""
        unknown = sorted(set(options) - CacheOptions.__optional_keys__)
        if unknown:
            raise ConfigError(
                f"unknown cache options: {', '.join(unknown)}",
                problems=[ConfigProblem(f"cache.{n}", "not a cache option") for n in unknown],
            )
        lock_ttl = cast(float, check_seconds("lock_ttl", options.get("lock_ttl", 30.0)))
        lock_wait = check_seconds("lock_wait", options.get("lock_wait"), optional=True, zero=True)
        return cls(
            keys=KeySpace(
                options.get("namespace", "mainspring"),
                options.get("schema_version", "v1"),
                options.get("max_key_length", DEFAULT_MAX_KEY_LENGTH),
            ),
            default_ttl=check_seconds("default_ttl", options.get("default_ttl", 300.0), optional=True),
            negative_ttl=cast(float, check_seconds("negative_ttl", options.get("negative_ttl", 30.0))),
            stale_ttl=cast(float, check_seconds("stale_ttl", options.get("stale_ttl", 0.0), zero=True)),
            loader_timeout=check_seconds("loader_timeout", options.get("loader_timeout"), optional=True),
            tag_ttl=cast(float, check_seconds("tag_ttl", options.get("tag_ttl", 30 * 86400.0))),
            xfetch_beta=cast(float, check_seconds("xfetch_beta", options.get("xfetch_beta") or 0, zero=True)),
            refresh_ahead=check_fraction("refresh_ahead", options.get("refresh_ahead") or 0),
            lock_ttl=lock_ttl,
            lock_wait=lock_ttl if lock_wait is None else lock_wait,
            shutdown_timeout=cast(
                float, check_seconds("shutdown_timeout", options.get("shutdown_timeout", 5.0), zero=True)
            ),
            serializer=options.get("serializer") or Serializer(),
            clock=options.get("clock"),
            rng=options.get("rng") or random.Random(),
        )
