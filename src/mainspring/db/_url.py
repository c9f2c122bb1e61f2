"""Database URLs: which backends mainspring supports, how a URL is checked, and how it is shown safely.

A URL picks the backend: ``sqlite+aiosqlite:///file.db`` (embedded, the default), ``postgresql+asyncpg://``
and ``mysql+asyncmy://`` (MySQL and MariaDB). The bare forms ``sqlite://``, ``postgresql://`` /
``postgres://`` and ``mysql://`` / ``mariadb://`` are accepted too and get the async driver mainspring uses,
so the URL a DBA hands out works as it is.

This module is used by the settings (layer 0) as well as by :class:`~mainspring.db.Database`, so it imports
nothing from ``mainspring.db``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mainspring.config._sections import DATABASE_SCHEME_ALIASES, DATABASE_SCHEMES, supported_database_schemes
from mainspring.errors import ConfigError, ConfigProblem

__all__ = [
    "BACKENDS",
    "Backend",
    "Dialect",
    "ParsedURL",
    "mask_url",
    "parse_url",
]

Dialect = Literal["sqlite", "postgresql", "mysql"]

_MASK = "***"


@dataclass(frozen=True, slots=True)
class Backend:
    """One supported ``scheme+driver``: the dialect, the driver module and the extra that installs it."""

    scheme: str
    dialect: Dialect
    module: str
    extra: str | None
    feature: str


_DIALECTS: dict[str, tuple[Dialect, str, str]] = {
    "sqlite+aiosqlite": ("sqlite", "aiosqlite", "the SQLite backend"),
    "postgresql+asyncpg": ("postgresql", "asyncpg", "the PostgreSQL backend"),
    "mysql+asyncmy": ("mysql", "asyncmy", "the MySQL/MariaDB backend"),
    "mariadb+asyncmy": ("mysql", "asyncmy", "the MySQL/MariaDB backend"),
}

#: Supported ``scheme+driver`` names (the list lives with the settings, which check it first).
BACKENDS: dict[str, Backend] = {
    scheme: Backend(scheme, *_DIALECTS[scheme][:2], extra, _DIALECTS[scheme][2])
    for scheme, extra in DATABASE_SCHEMES.items()
}

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")


def mask_url(url: str | URL) -> str:
    """Return ``url`` as text with its password replaced by ``***``; safe for logs, reprs and errors."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    match = _SCHEME.match(url)
    if match is None:
        return _mask_text(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _mask_text(url)


def _mask_text(text: str) -> str:
    # Fallback for text SQLAlchemy cannot parse: hide whatever sits between "user:" and "@".
    return re.sub(r"(//[^:/@\s]*:)[^@/\s]*@", rf"\g<1>{_MASK}@", text)


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A checked database URL: the SQLAlchemy :class:`~sqlalchemy.engine.URL` and its backend."""

    url: URL
    backend: Backend

    @property
    def dialect(self) -> Dialect:
        """The dialect family: ``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
        return self.backend.dialect

    @property
    def masked(self) -> str:
        """The URL with its password hidden."""
        return mask_url(self.url)

    @property
    def is_memory(self) -> bool:
        """Say whether this is an in-memory SQLite database (one connection, gone on stop)."""
        database = self.url.database
        return self.dialect == "sqlite" and (
            not database or database == ":memory:" or database.startswith("file::memory:")
        )


def parse_url(url: str, *, path: str = "url", password: str | None = None) -> ParsedURL:
    """Check ``url`` and return it parsed; raise :class:`ConfigError` naming the supported schemes if not.

    ``password``, when given, replaces the password in the URL (settings keep it apart as a secret).
    ``path`` is the settings path reported in the error.
    """
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise ConfigError(
            "the database URL has no scheme; expected scheme://...",
            problems=[ConfigProblem(path, f"use one of: {supported_database_schemes()}", mask_url(text))],
        )
    scheme = match.group("scheme").lower()
    canonical = DATABASE_SCHEME_ALIASES.get(scheme, scheme)
    backend = BACKENDS.get(canonical)
    if backend is None:
        raise ConfigError(
            f"unsupported database URL scheme {scheme!r}",
            problems=[ConfigProblem(path, f"use one of: {supported_database_schemes()}", mask_url(text))],
            details={"scheme": scheme, "supported": sorted(BACKENDS)},
        )
    try:
        parsed = make_url(canonical + text[len(match.group("scheme")) :])
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            "the database URL is malformed",
            problems=[ConfigProblem(path, "could not be parsed as scheme://user:password@host:port/name")],
        ) from exc
    if password is not None:
        parsed = parsed.set(password=password)
    if backend.dialect != "sqlite" and not parsed.database:
        raise ConfigError(
            "the database URL names no database",
            problems=[ConfigProblem(path, "add the database name: .../<name>", mask_url(parsed))],
        )
    return ParsedURL(parsed, backend)
