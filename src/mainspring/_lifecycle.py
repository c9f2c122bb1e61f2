"""The lifecycle every resource-holding component shares: ``start()``, ``stop()``, ``async with``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class AsyncLifecycle(ABC):
    """A component started with ``await start()`` and stopped with ``await stop()``.

    ``async with component:`` starts it and stops it on exit, also when the block raises. Nothing
    connects or spawns a task before ``start()``.
    """

    @abstractmethod
    async def start(self) -> None:
        """Open connections and start background work."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop background work and release every resource; safe to call more than once."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
