"""``mainspring cache``: look at the service's cache: stats and health, one key, clear by prefix.

The cache comes from the service settings (``cache.url`` and the rest of ``cache:``), or from ``--url``.
Every failure is a :class:`~mainspring.errors.MainspringError`, which ``mainspring.cli.main`` prints as
one line with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from mainspring.cache._factory import create_cache
from mainspring.cache._protocols import Cache
from mainspring.cli._common import ConfigDirOption, ProfileOption, SettingsOption, run_component
from mainspring.cli._config import resolve_settings_class
from mainspring.config import load_settings
from mainspring.errors import NotFoundError, ValidationError

__all__ = ["cache_app"]

T = TypeVar("T")

cache_app = typer.Typer(
    help="The service's cache: stats and health, read a key, clear by prefix.", no_args_is_help=True
)

UrlOption = Annotated[
    str | None, typer.Option("--url", help="Cache URL; overrides the settings (default: cache.url).")
]


def _cache(url: str | None, settings: str | None, profile: str | None, config_dir: Path | None) -> Cache:
    if url is not None:
        return create_cache(url)
    loaded = load_settings(resolve_settings_class(settings), profile=profile, config_dir=config_dir)
    return create_cache(loaded.cache)


def _json(value: Any) -> str:
    # default=repr: a value the codec could decode but JSON cannot show (bytes, a set) is still printed.
    return orjson.dumps(value, default=repr, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@cache_app.command("stats")
def _stats(
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Ping the cache and print its health and counters (this process's counters for a memory cache)."""
    health = run_component(_cache(url, settings, profile, config_dir), lambda cache: cache.health())
    stats = health.stats
    latency = "-" if health.latency is None else f"{health.latency * 1000:.2f} ms"
    typer.echo(f"backend: {health.backend}")
    typer.echo(f"healthy: {'yes' if health.healthy else 'no'}  ({health.detail}, ping {latency})")
    typer.echo(f"entries: {'-' if stats.entries is None else stats.entries}")
    typer.echo(f"bytes: {'-' if stats.size_bytes is None else stats.size_bytes}")
    typer.echo(f"hit ratio: {stats.hit_ratio:.3f}")
    for name in ("hits", "misses", "stale_served", "errors", "undecodable", "evictions", "expirations"):
        typer.echo(f"{name.replace('_', ' ')}: {getattr(stats, name)}")
    if not health.healthy:
        raise typer.Exit(1)


@cache_app.command("get")
def _get(
    key: Annotated[str, typer.Argument(help="The key, as the application passes it (without namespace).")],
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Print the fresh cached value of KEY as JSON, and its remaining ttl on stderr."""
    missing = object()

    async def read(cache: Cache) -> tuple[Any, float | None]:
        return await cache.get(key, missing), await cache.ttl(key)

    value, ttl = run_component(_cache(url, settings, profile, config_dir), read)
    if value is missing:
        raise NotFoundError(f"no fresh value cached for key {key!r} (missing, expired or invalidated)")
    typer.echo(_json(value))
    typer.echo(
        "ttl: none (no expiry)" if ttl is None or ttl == float("inf") else f"ttl: {ttl:.1f} s", err=True
    )


@cache_app.command("clear")
def _clear(
    prefix: Annotated[str, typer.Argument(help="Delete the keys starting with this (e.g. 'user:').")] = "",
    everything: Annotated[
        bool, typer.Option("--all", help="Delete every key of the namespace (PREFIX empty).")
    ] = False,
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Delete the keys starting with PREFIX in the cache's namespace (SCAN-based on Redis)."""
    if not prefix and not everything:
        raise ValidationError("give a PREFIX to clear, or --all to clear every key of the namespace")
    if prefix and everything:
        raise ValidationError("give either a PREFIX or --all, not both")
    removed = run_component(_cache(url, settings, profile, config_dir), lambda cache: cache.clear(prefix))
    typer.echo(f"cleared {removed} key{'s' if removed != 1 else ''}")
