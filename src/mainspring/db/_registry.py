"""``DatabaseRegistry``: the named databases of one service, started and stopped together."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mainspring._lifecycle import AsyncLifecycle
from mainspring.db._database import Database
from mainspring.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from mainspring.config import Settings

__all__ = ["DatabaseRegistry"]


class DatabaseRegistry(AsyncLifecycle, Mapping[str, Database]):
    """Several named :class:`Database` objects (a database per service or per bounded context).

    ``registry["reporting"]`` returns one; ``registry.default`` the one named ``default``. :meth:`start`
    starts them all (stopping those already started if one fails), :meth:`stop` stops them in reverse.
    """

    def __init__(self, databases: Mapping[str, Database] | None = None) -> None:
        self._databases: dict[str, Database] = {}
        for name, database in (databases or {}).items():
            self.add(database, name=name)

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseRegistry:
        """Build ``default`` from ``settings.database`` and one database per ``settings.databases`` entry."""
        registry = cls()
        registry.add(Database.from_settings(settings.database, name="default"))
        for name, section in settings.databases.items():
            registry.add(Database.from_settings(section, name=name))
        return registry

    def add(self, database: Database, *, name: str | None = None) -> Database:
        """Register ``database`` under ``name`` (default: its own name); names are unique."""
        key = name or database.name
        if key in self._databases:
            raise ConfigError(
                f"two databases are named {key!r}",
                problems=[ConfigProblem(f"databases.{key}", "database names must be unique")],
            )
        self._databases[key] = database
        return database

    def __getitem__(self, name: str) -> Database:
        """Return the database called ``name``; ``KeyError`` naming the configured ones if there is none."""
        try:
            return self._databases[name]
        except KeyError:
            known = ", ".join(sorted(self._databases)) or "none"
            raise KeyError(f"no database named {name!r}; configured: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._databases)

    def __len__(self) -> int:
        return len(self._databases)

    @property
    def default(self) -> Database:
        """The database named ``default``."""
        return self["default"]

    async def start(self) -> None:
        """Start every database in registration order; if one fails, stop the started ones and raise."""
        started: list[Database] = []
        try:
            for database in self._databases.values():
                await database.start()
                started.append(database)
        except BaseException:
            for database in reversed(started):
                await database.stop()
            raise

    async def stop(self) -> None:
        """Stop every database, in reverse registration order."""
        for database in reversed(self._databases.values()):
            await database.stop()

    def __repr__(self) -> str:
        return f"<DatabaseRegistry {sorted(self._databases)}>"
