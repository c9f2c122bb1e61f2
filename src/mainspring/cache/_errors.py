"""The errors of the cache subsystem that backends raise or translate to."""

from __future__ import annotations

from mainspring.errors import ConflictError, DeadlineExceededError, ServiceUnavailableError

__all__ = ["CacheBackendError", "CacheLoaderTimeoutError", "not_a_counter"]


class CacheBackendError(ServiceUnavailableError):
    """The cache backend could not be reached or answered with an error (503).

    Backends raise it from their primitives (translating driver errors); reads and writes degrade
    instead of raising it, ``incr``/``expire``/``ttl``/``clear`` raise it.
    """

    code = "cache_unavailable"


class CacheLoaderTimeoutError(DeadlineExceededError):
    """The loader of ``get_or_set`` ran past its timeout and no stale value could stand in (504)."""

    code = "cache_loader_timeout"


def not_a_counter(key: str) -> ConflictError:
    """Return the error ``incr`` raises for a key that holds something other than a plain integer."""
    return ConflictError(
        f"cache key {key!r} holds a value that is not a counter; incr works on keys created by incr, or "
        "by set with an int while stale_ttl is 0",
        details={"key": key[:200]},
    )
