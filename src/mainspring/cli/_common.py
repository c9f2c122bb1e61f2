"""What the component commands (``cache``, ``messaging``) share: settings options and a run helper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import typer

from mainspring.config import LoggingSettings
from mainspring.logging import configure_logging, shutdown_logging

__all__ = ["ConfigDirOption", "ProfileOption", "SettingsOption", "run_component"]

T = TypeVar("T")
C = TypeVar("C", bound="_Lifecycle")

SettingsOption = Annotated[
    str | None, typer.Option("--settings", help="Your settings class as module:Class.")
]
ProfileOption = Annotated[
    str | None, typer.Option("--profile", "-p", help="Profile to load (default: MAINSPRING_PROFILE or dev).")
]
ConfigDirOption = Annotated[
    Path | None,
    typer.Option("--config-dir", help="Directory of base.yaml and <profile>.yaml (default: ./config)."),
]


class _Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def run_component(
    component: C, action: Callable[[C], Awaitable[T]], *, stop: Callable[[C], Awaitable[None]] | None = None
) -> T:
    """Start ``component``, run ``action(component)``, stop it (with ``stop`` if given); return the result.

    The command's output is its own lines; only the component's warnings and errors go to stderr.
    """

    async def run() -> T:
        await component.start()
        try:
            return await action(component)
        finally:
            await (stop(component) if stop is not None else component.stop())

    configure_logging(LoggingSettings(level="WARNING", format="console", sink="stderr"))
    try:
        return asyncio.run(run())
    finally:
        shutdown_logging()
