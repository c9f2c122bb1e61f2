"""``@cached`` and ``@invalidate`` for async and plain functions, and the process's default cache."""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from mainspring.cache._keys import function_key, function_name
from mainspring.cache._protocols import Cache, SupportsSync, SyncCache
from mainspring.errors import ConfigError, ConfigProblem, MainspringError, ValidationError

__all__ = ["CacheSource", "cached", "get_default_cache", "invalidate", "set_default_cache"]

F = TypeVar("F", bound=Callable[..., Any])

#: Where a decorator finds its cache: a cache, a function returning one (resolved at each call, so
#: it may be made at start-up, after the decorator ran), or ``None`` for the default cache.
CacheSource = Cache | Callable[[], Cache] | None
#: A key (or tag) given to a decorator: a template over the parameters (``"user:{user_id}"``) or a
#: function taking the call's arguments.
KeySpec = str | Callable[..., str]
TagsSpec = Iterable[str] | Callable[..., Iterable[str]]

_default: Cache | None = None


class NoCacheError(MainspringError):
    """A cache decorator ran without a cache: none was passed and no default is set (500)."""

    code = "cache_not_configured"
    expose_message = False


def set_default_cache(cache: Cache | None) -> None:
    """Make ``cache`` the one decorators use when given no ``cache=`` (``None`` removes it)."""
    global _default
    _default = cache


def get_default_cache() -> Cache:
    """Return the default cache; :class:`NoCacheError` if none was set."""
    if _default is None:
        raise NoCacheError(
            "no cache for this decorated function: pass cache=... to the decorator, or call "
            "mainspring.cache.set_default_cache(cache) at start-up"
        )
    return _default


def _resolver(source: CacheSource) -> Callable[[], Cache]:
    if source is None:
        return get_default_cache
    if hasattr(source, "get_or_set"):
        fixed = cast(Cache, source)
        return lambda: fixed
    return source


def _sync_of(cache: Cache) -> SyncCache:
    if isinstance(cache, SupportsSync):
        return cache.sync
    raise NoCacheError(
        f"{type(cache).__name__} has no synchronous surface, so it cannot serve a plain (non-async) "
        "function; use MemoryCache (or SyncRedisCache), or make the function async"
    )


def _template_fields(template: str) -> set[str]:
    fields = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            fields.add(field.split(".")[0].split("[")[0])
    return fields


def _check_templates(
    func: Callable[..., Any], sig: inspect.Signature, templates: Iterable[str], what: str
) -> None:
    params = set(sig.parameters)
    for template in templates:
        fields = _template_fields(template)
        missing = sorted(f for f in fields if f and f not in params)
        if missing or "" in fields:
            raise ConfigError(
                f"the {what} template {template!r} of {function_name(func)} names "
                f"{missing or 'a positional field'}, which is not a parameter; use names from "
                f"{sorted(params)}",
                problems=[ConfigProblem(what, "template fields must be parameter names", template)],
            )


def _arguments(sig: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"cannot bind the call's arguments: {exc}") from exc
    bound.apply_defaults()
    return dict(bound.arguments)


def _key_builder(
    func: Callable[..., Any], sig: inspect.Signature, key: KeySpec | None, skip: Iterable[str]
) -> Callable[[tuple[Any, ...], Mapping[str, Any]], str]:
    if key is None:
        skipped = tuple(skip)
        return lambda args, kwargs: function_key(func, args, kwargs, skip=skipped, signature=sig)
    if isinstance(key, str):
        _check_templates(func, sig, [key], "key")
        return lambda args, kwargs: key.format_map(_arguments(sig, args, kwargs))
    return lambda args, kwargs: key(*args, **kwargs)


def _tags_builder(
    func: Callable[..., Any], sig: inspect.Signature, tags: TagsSpec
) -> Callable[[tuple[Any, ...], Mapping[str, Any]], tuple[str, ...]]:
    if callable(tags):
        return lambda args, kwargs: tuple(tags(*args, **kwargs))
    if isinstance(tags, str):
        raise ConfigError(
            "tags must be a list of templates, not one string: tags=['user:{user_id}']",
            problems=[ConfigProblem("tags", "expected a list", tags)],
        )
    templates = tuple(tags)
    _check_templates(func, sig, templates, "tag")
    if not templates:
        return lambda args, kwargs: ()
    return lambda args, kwargs: tuple(t.format_map(_arguments(sig, args, kwargs)) for t in templates)


def cached(
    ttl: float | None = None,
    *,
    key: KeySpec | None = None,
    tags: TagsSpec = (),
    cache: CacheSource = None,
    negative_ttl: float | None = None,
    cache_none: bool = True,
    stale_ttl: float | None = None,
    loader_timeout: float | None = None,
    lock: bool = False,
    skip: Iterable[str] = ("self", "cls"),
) -> Callable[[F], F]:
    """Cache the results of an async or a plain function, through ``get_or_set`` (stampede-safe).

    ``key`` is a template over the parameters (``"user:{user_id}"``) or a function of the arguments;
    by default it is ``module.qualname(arg=canonical, ...)``, stable across processes, without the
    parameters named in ``skip`` (so a method's results are shared by its instances). ``tags`` are
    templates too. A plain function needs a cache with a sync surface (``MemoryCache``); there is no
    loader timeout for it. The other options are those of ``get_or_set``.
    """

    def decorate(func: F) -> F:
        sig = inspect.signature(func)
        key_of = _key_builder(func, sig, key, skip)
        tags_of = _tags_builder(func, sig, tags)
        resolve = _resolver(cache)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await resolve().get_or_set(
                    key_of(args, kwargs),
                    lambda: func(*args, **kwargs),
                    ttl=ttl,
                    tags=tags_of(args, kwargs),
                    negative_ttl=negative_ttl,
                    cache_none=cache_none,
                    stale_ttl=stale_ttl,
                    loader_timeout=loader_timeout,
                    lock=lock,
                )

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return _sync_of(resolve()).get_or_set(
                key_of(args, kwargs),
                lambda: func(*args, **kwargs),
                ttl=ttl,
                tags=tags_of(args, kwargs),
                negative_ttl=negative_ttl,
                cache_none=cache_none,
                stale_ttl=stale_ttl,
            )

        return cast(F, sync_wrapper)

    return decorate


def invalidate(*, keys: TagsSpec = (), tags: TagsSpec = (), cache: CacheSource = None) -> Callable[[F], F]:
    """After the decorated (async or plain) function returns, delete ``keys`` and invalidate ``tags``.

    Both are templates over the function's parameters (``"user:{user_id}"``) or a function of its
    arguments. Nothing is invalidated when the function raises.
    """

    def decorate(func: F) -> F:
        sig = inspect.signature(func)
        keys_of = _tags_builder(func, sig, keys)
        tags_of = _tags_builder(func, sig, tags)
        resolve = _resolver(cache)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await func(*args, **kwargs)
                target = resolve()
                if names := keys_of(args, kwargs):
                    await target.delete_many(names)
                if names := tags_of(args, kwargs):
                    await target.invalidate_tags(*names)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            target = _sync_of(resolve())
            if names := keys_of(args, kwargs):
                target.delete_many(names)
            if names := tags_of(args, kwargs):
                target.invalidate_tags(*names)
            return result

        return cast(F, sync_wrapper)

    return decorate
