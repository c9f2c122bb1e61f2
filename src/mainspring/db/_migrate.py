"""The Python side of ``mainspring db``: :class:`Migrator` runs Alembic on an async database.

Alembic's commands are synchronous; the Migrator opens an async connection and hands Alembic its
sync-facing side through ``AsyncConnection.run_sync`` (Alembic's "connection sharing" recipe), so the
migrations run on the same engine, event loop and driver as the service. The migration environment
(``migrations/env.py``) receives that connection through ``Config.attributes`` and calls
:func:`mainspring.db.migrations.run_migrations`.

A service's history holds two branches: its own revisions in ``migrations/versions`` (labelled ``app``)
and the library's tables in :data:`~mainspring.db.migrations.LIBRARY_VERSIONS` (labelled
``mainspring``). ``upgrade()`` goes to ``heads``, both branches.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import shutil
import string
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from alembic import command
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from mainspring.db._database import Database
from mainspring.db._errors import is_db_error, translate_db_error
from mainspring.db.migrations._env import CONNECTION_KEY, METADATA_KEY, STEPS_KEY
from mainspring.db.migrations._errors import MigrationError
from mainspring.db.migrations._library import LIBRARY_BRANCH, LIBRARY_VERSIONS, SERVICE_BRANCH, TEMPLATES
from mainspring.errors import MainspringError, ServiceUnavailableError

__all__ = ["MetadataSource", "MigrationStep", "Migrator", "RevisionInfo"]

T = TypeVar("T")

#: What autogenerate compares the database with: a ``MetaData``, several, a declarative base class
#: (its ``metadata``), or a ``"package.module:attribute"`` string naming one of these.
MetadataSource = MetaData | Sequence[MetaData] | type | str | None

# Revision files sort by date in a directory listing: 20250101_3f2a9c1d4e5b_add_orders.py.
_FILE_TEMPLATE = "%(year)d%(month).2d%(day).2d_%(rev)s_%(slug)s"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_SPEC = re.compile(
    rf"^(?P<module>{_IDENTIFIER}(?:\.{_IDENTIFIER})*):(?P<attr>{_IDENTIFIER}(?:\.{_IDENTIFIER})*)$"
)
# The migration lock: an advisory lock id on PostgreSQL (per database), a named lock on MySQL/MariaDB.
_PG_LOCK_ID = 0x6D5F6D6967  # "m_mig"
_LOCK_WAIT = 600.0  # seconds a migration waits for another one to finish
_UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '(?P<rev>[^']*)'")


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    """One revision of the migration history."""

    #: The revision identifier (``3f2a9c1d4e5b``; the library's are ``mainspring_0001`` and so on).
    id: str
    #: The message given when the revision was created (its docstring's first paragraph).
    message: str
    #: The revisions this one follows; empty for the first revision of a branch.
    down_revisions: tuple[str, ...]
    #: The branch labels it belongs to (``app``, ``mainspring``).
    branch_labels: tuple[str, ...]
    #: Whether no revision follows it.
    is_head: bool
    #: The revision file.
    path: Path

    @property
    def library(self) -> bool:
        """Whether this revision ships with mainspring (the ``mainspring`` branch)."""
        return LIBRARY_BRANCH in self.branch_labels or self.path.parent == LIBRARY_VERSIONS


@dataclass(frozen=True, slots=True)
class MigrationStep:
    """One revision applied (``upgrade``) or reverted (``downgrade``) by an upgrade or a downgrade."""

    revision: str
    message: str
    direction: Literal["upgrade", "downgrade"]


class Migrator:
    """Create, apply and inspect the Alembic migrations of one database.

    ``database`` is a URL or a :class:`~mainspring.db.Database`; it is only needed by the methods that
    touch the database. A Database that is already started is used as it is; otherwise the Migrator
    starts it for each operation and stops it after (so an unreachable database raises
    :class:`~mainspring.errors.ServiceUnavailableError` after its ``start_timeout``).
    ``script_location`` is the migrations folder (default ``./migrations``). ``metadata`` is what
    ``revision(autogenerate=True)`` compares the database with; it overrides ``target_metadata`` in
    ``migrations/env.py``.

    Everything raises :class:`~mainspring.db.migrations.MigrationError` (a
    :class:`~mainspring.errors.MainspringError`) with a message that says what to do.
    """

    def __init__(
        self,
        database: str | Database | None = None,
        *,
        script_location: str | os.PathLike[str] = "migrations",
        metadata: MetadataSource = None,
    ) -> None:
        self._database = database
        self.script_location = Path(script_location)
        self._metadata = metadata

    def __repr__(self) -> str:
        return f"Migrator({self._database!r}, script_location={str(self.script_location)!r})"

    @property
    def versions(self) -> Path:
        """The folder of the service's own revision files (``<script_location>/versions``)."""
        return self.script_location / "versions"

    # --- without the database ---------------------------------------------------------------------

    def init(self, *, metadata: str | None = None) -> Path:
        """Create the migrations folder: ``env.py``, ``script.py.mako`` and an empty ``versions/``.

        ``metadata`` (``"package.module:Base.metadata"``) is written into ``env.py`` as
        ``target_metadata``, for autogenerate. Raises :class:`MigrationError` when the folder exists
        and is not empty. Returns the folder.
        """
        folder = self.script_location
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise MigrationError(
                f"{folder} already exists and is not empty: the migrations are set up there already "
                "(choose another folder with --dir)"
            )
        if metadata is None:
            metadata_import, metadata_expr = "", "None"
        else:
            match = _IMPORT_SPEC.match(metadata)
            if match is None:
                raise MigrationError(f"metadata {metadata!r} should look like 'package.module:Base.metadata'")
            first, _, _ = match["attr"].partition(".")
            metadata_import = f"\nfrom {match['module']} import {first}\n"
            metadata_expr = match["attr"]
        env = string.Template((TEMPLATES / "env.py.tmpl").read_text(encoding="utf-8")).substitute(
            metadata_import=metadata_import, metadata_expr=metadata_expr
        )
        self.versions.mkdir(parents=True, exist_ok=True)
        (folder / "env.py").write_text(env, encoding="utf-8")
        shutil.copyfile(TEMPLATES / "script.py.mako", folder / "script.py.mako")
        # Git keeps no empty folders, and Alembic needs versions/ to exist.
        (self.versions / ".gitkeep").touch()
        return folder

    def history(self) -> list[RevisionInfo]:
        """Return every revision, the service's and the library's, newest first."""
        script = self._script(self._config())
        with _translated("history"):
            return [self._info(rev) for rev in script.walk_revisions()]

    # --- with the database ------------------------------------------------------------------------

    async def revision(
        self, message: str, *, autogenerate: bool = False, rev_id: str | None = None
    ) -> RevisionInfo | None:
        """Write a new revision file into the service's ``versions/`` folder and return it.

        It follows the service's latest revision (the first one starts the ``app`` branch). With
        ``autogenerate`` the database is compared with the metadata and the differences are written
        as operations; the database must be up to date (``upgrade()`` first). When autogenerate finds
        no difference, no file is written and ``None`` is returned.
        """
        config = self._config()
        script = self._script(config)
        head, branch_label = self._service_head(script)
        options: dict[str, Any] = {
            "message": message,
            "head": head,
            "branch_label": branch_label,
            "version_path": str(self.versions),
            "rev_id": rev_id,
        }
        if not autogenerate:
            with _translated("revision"):
                written = command.revision(config, **options)
            return self._first_written(written)

        metadata = self._resolved_metadata()

        def skip_empty(context: MigrationContext, revision: Any, directives: list[MigrationScript]) -> None:
            if directives and all(ops.is_empty() for ops in directives[0].upgrade_ops_list):
                directives[:] = []

        def autogenerate_revision(connection: Connection) -> Any:
            config.attributes[CONNECTION_KEY] = connection
            config.attributes[METADATA_KEY] = metadata
            return command.revision(
                config, autogenerate=True, process_revision_directives=skip_empty, **options
            )

        written = await self._run("revision --autogenerate", autogenerate_revision)
        return self._first_written(written)

    async def upgrade(self, revision: str = "heads") -> list[MigrationStep]:
        """Apply the revisions up to ``revision`` (default ``heads``: every branch); return the steps.

        Other targets: ``app@head`` (the service's branch), ``mainspring@head`` (the library's), a
        revision id, ``+1``.
        """
        return await self._migrate("upgrade", revision)

    async def downgrade(self, revision: str) -> list[MigrationStep]:
        """Revert revisions down to ``revision``; return the steps.

        ``base`` reverts everything (the library's tables too), ``app@base`` only the service's
        branch, ``app@-1`` the service's latest revision, a revision id everything after it.
        """
        return await self._migrate("downgrade", revision)

    async def current(self) -> list[RevisionInfo]:
        """Return the revisions the database is at (one per branch); empty when nothing is applied."""
        config = self._config()
        script = self._script(config)
        heads = await self._run("current", lambda connection: _current_heads(config, script, connection))
        return self._known(script, heads)

    async def pending(self) -> list[RevisionInfo]:
        """Return the revisions not yet applied to the database, in the order ``upgrade()`` applies them."""
        config = self._config()
        script = self._script(config)
        heads = await self._run("pending", lambda connection: _current_heads(config, script, connection))
        self._known(script, heads)
        with _translated("pending"):
            applied = {rev.revision for head in heads for rev in script.iterate_revisions(head, "base")}
            every = list(script.walk_revisions())
        return [self._info(rev) for rev in reversed(every) if rev.revision not in applied]

    # --- internals --------------------------------------------------------------------------------

    async def _migrate(
        self, direction: Literal["upgrade", "downgrade"], revision: str
    ) -> list[MigrationStep]:
        config = self._config()
        self._script(config)
        metadata = self._resolved_metadata()
        run = command.upgrade if direction == "upgrade" else command.downgrade

        def migrate(connection: Connection) -> list[tuple[str, bool, str]]:
            steps: list[tuple[str, bool, str]] = []
            config.attributes.update({CONNECTION_KEY: connection, METADATA_KEY: metadata, STEPS_KEY: steps})
            run(config, revision)
            return steps

        steps = await self._run(f"{direction} to {revision!r}", migrate, lock=True)
        return [
            MigrationStep(rev, message, "upgrade" if is_upgrade else "downgrade")
            for rev, is_upgrade, message in steps
        ]

    def _config(self) -> Config:
        folder = self.script_location
        if not (folder / "env.py").is_file():
            raise MigrationError(
                f"no migrations folder at {folder} (no env.py there): run `mainspring db init` first, "
                "or point --dir at the folder"
            )
        # quiet: the commands report through return values, not by printing.
        config = Config(stdout=io.StringIO(), cmd_opts=argparse.Namespace(quiet=True))
        # The values go through configparser interpolation, where "%" is special.
        config.set_main_option("script_location", _escape(str(folder)))
        config.set_main_option("path_separator", "os")
        locations = os.pathsep.join([str(self.versions), str(LIBRARY_VERSIONS)])
        config.set_main_option("version_locations", _escape(locations))
        config.set_main_option("file_template", _escape(_FILE_TEMPLATE))
        return config

    def _script(self, config: Config) -> ScriptDirectory:
        with _translated("reading the migrations"):
            script = ScriptDirectory.from_config(config)
            script.revision_map.heads  # noqa: B018  # loads every revision file now, so errors surface here
        return script

    def _service_head(self, script: ScriptDirectory) -> tuple[str, str | None]:
        """The head a new service revision follows, and the branch label when it starts the branch."""
        versions = self.versions.resolve()
        with _translated("revision"):
            heads = [
                rev.revision
                for rev in script.walk_revisions()
                if rev.is_head and Path(rev.path).resolve().parent == versions
            ]
        if not heads:
            return "base", SERVICE_BRANCH
        if len(heads) > 1:
            raise MigrationError(
                f"the revisions in {self.versions} have several heads ({', '.join(sorted(heads))}): "
                "merge them first with a revision whose down_revision lists them all"
            )
        return heads[0], None

    def _resolved_metadata(self) -> MetaData | list[MetaData] | None:
        source = self._metadata
        return _as_metadata(_import_object(source) if isinstance(source, str) else source, source)

    def _info(self, script: Script) -> RevisionInfo:
        down = script.down_revision
        downs = (down,) if isinstance(down, str) else tuple(down or ())
        return RevisionInfo(
            id=script.revision,
            message=script.doc,
            down_revisions=downs,
            branch_labels=tuple(sorted(script.branch_labels)),
            is_head=script.is_head,
            path=Path(script.path).resolve(),
        )

    def _first_written(self, written: Script | list[Script | None] | None) -> RevisionInfo | None:
        scripts = written if isinstance(written, list) else [written]
        found = [s for s in scripts if s is not None]
        if not found:
            return None
        # Read it back through a fresh map: only a full map gives the new revision its branch label.
        script = self._script(self._config())
        with _translated("revision"):
            return self._info(script.get_revision(found[0].revision) or found[0])

    def _known(self, script: ScriptDirectory, heads: Sequence[str]) -> list[RevisionInfo]:
        infos = []
        for head in heads:
            try:
                found = script.get_revision(head)
            except (CommandError, RevisionError):
                found = None
            if found is None:
                raise MigrationError(
                    f"the database is at revision {head!r}, which is in neither {self.versions} nor the "
                    "library's migrations: restore its revision file (or the right --dir)"
                )
            infos.append(self._info(found))
        return infos

    async def _run(self, what: str, fn: Callable[[Connection], T], *, lock: bool = False) -> T:
        """Run ``fn`` with a sync-facing connection to the database, errors translated.

        ``lock`` holds the migration lock meanwhile (PostgreSQL and MySQL/MariaDB), so replicas that
        all run ``upgrade`` at start-up apply each revision once: the others wait, then find nothing
        left to do.
        """
        database = self._require_database()
        started_here = not database.started
        if started_here:
            await database.start()
        try:
            async with database.engine.connect() as connection:
                with _translated(what):
                    return await connection.run_sync(_in_migration_session, fn, lock)
        except MainspringError:
            raise
        except Exception as exc:
            if not is_db_error(exc):
                raise
            translated = translate_db_error(exc, database.dialect, database=database.name)
            if isinstance(translated, ServiceUnavailableError):
                raise translated from exc
            raise MigrationError(f"{what} failed: {translated.message}") from exc
        finally:
            if started_here:
                await database.stop()

    def _require_database(self) -> Database:
        database = self._database
        if database is None:
            raise MigrationError(
                "no database to migrate: pass --url or set database.url in the settings "
                "(in Python: Migrator(url_or_database, ...))"
            )
        if isinstance(database, str):
            return Database(database)
        return database


def _in_migration_session(connection: Connection, fn: Callable[[Connection], T], lock: bool) -> T:
    """Run ``fn`` on ``connection`` and commit; hold the migration lock if asked.

    SQLite cannot ALTER most things, so batch mode copies the table, drops the original and renames
    the copy. With foreign keys enforced, dropping a parent table deletes (or cascades to) its
    children's rows; SQLite's documented procedure turns enforcement off around the rebuild. The
    PRAGMA only works outside a transaction, so it goes straight to the driver connection before
    anything begins one, and the previous setting is restored after the commit.
    """
    dialect = connection.dialect.name
    enforced = _sqlite_pragma(connection, "foreign_keys") if dialect == "sqlite" else None
    if enforced:
        _sqlite_pragma(connection, "foreign_keys", 0)
    mysql_lock = lock and dialect in ("mysql", "mariadb")
    try:
        if lock and dialect == "postgresql":
            # Transaction-scoped: released by the commit or rollback that ends the migration. (The
            # whole upgrade is one transaction on PostgreSQL, whose DDL is transactional.)
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(_LOCK_WAIT * 1000)}ms'")
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
        if mysql_lock:
            # Named locks are server-wide: the name includes the database, so services sharing a
            # server don't wait for each other.
            got = connection.exec_driver_sql(
                f"SELECT GET_LOCK(CONCAT('mainspring_migrate:', DATABASE()), {int(_LOCK_WAIT)})"
            ).scalar()
            if got != 1:
                raise MigrationError(
                    f"another migration held the migration lock for more than {_LOCK_WAIT:g} s; "
                    "retry when it has finished"
                )
        result = fn(connection)
        if connection.in_transaction():
            connection.commit()
        return result
    finally:
        if connection.in_transaction():
            connection.rollback()
        if mysql_lock:
            try:
                connection.exec_driver_sql("SELECT RELEASE_LOCK(CONCAT('mainspring_migrate:', DATABASE()))")
                connection.commit()
            except DBAPIError:
                # The connection is gone, and a named lock dies with its session: nothing to release.
                connection.invalidate()
        if enforced:
            _sqlite_pragma(connection, "foreign_keys", 1)


def _sqlite_pragma(connection: Connection, name: str, value: int | None = None) -> int | None:
    cursor = connection.connection.cursor()
    try:
        if value is not None:
            cursor.execute(f"PRAGMA {name}={value}")
            return value
        cursor.execute(f"PRAGMA {name}")
        row = cursor.fetchone()
        return int(row[0]) if row else None
    finally:
        cursor.close()


def _current_heads(config: Config, script: ScriptDirectory, connection: Connection) -> tuple[str, ...]:
    """Read the database's revisions through env.py, so its configuration (version table) applies."""
    heads: list[str] = []

    def read(rev: Any, context: MigrationContext) -> list[Any]:
        heads.extend(context.get_current_heads())
        return []

    config.attributes[CONNECTION_KEY] = connection
    with EnvironmentContext(config, script, fn=read, dont_mutate=True):
        script.run_env()
    return tuple(heads)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn Alembic's errors (and a failing import in env.py) into :class:`MigrationError`."""
    added = _cwd_on_path()
    try:
        yield
    except (CommandError, RevisionError) as exc:
        raise _alembic_error(exc, what) from exc
    except ImportError as exc:
        raise MigrationError(f"{what} failed: the migration environment could not import {exc}") from exc
    finally:
        if added:
            sys.path.remove(added)


def _cwd_on_path() -> str | None:
    # Like `python -m` and alembic.ini's prepend_sys_path: env.py imports the service's models, which
    # usually live in the current directory.
    cwd = os.getcwd()
    if cwd in sys.path:
        return None
    sys.path.insert(0, cwd)
    return cwd


def _alembic_error(exc: Exception, what: str) -> MigrationError:
    text = " ".join(str(exc).split())
    if match := _UNKNOWN_REVISION.search(text):
        return MigrationError(
            f"unknown revision {match['rev']!r}: `mainspring db history` lists the revisions "
            "(or use heads, base, app@head, mainspring@head)"
        )
    if "Target database is not up to date" in text:
        return MigrationError(
            "the database is not at the latest revision: run `mainspring db upgrade` before "
            "`mainspring db revision --autogenerate`"
        )
    if "does not provide a MetaData object" in text:
        return MigrationError(
            "autogenerate needs your models' metadata: pass --metadata package.module:Base.metadata, "
            "or set target_metadata in migrations/env.py"
        )
    if "Multiple head revisions" in text or "Multiple heads" in text:
        return MigrationError(
            f"{what} needs one target, but the history has several heads: use 'heads' (all branches), "
            f"'{SERVICE_BRANCH}@head' or '{LIBRARY_BRANCH}@head'"
        )
    return MigrationError(f"{what} failed: {text}")


def _import_object(spec: str) -> object:
    match = _IMPORT_SPEC.match(spec)
    if match is None:
        raise MigrationError(f"metadata {spec!r} should look like 'package.module:Base.metadata'")
    added = _cwd_on_path()
    try:
        found: object = importlib.import_module(match["module"])
    except ImportError as exc:
        raise MigrationError(f"cannot import metadata module {match['module']!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(added)
    for part in match["attr"].split("."):
        if not hasattr(found, part):
            raise MigrationError(f"module {match['module']!r} has no attribute {match['attr']!r}")
        found = getattr(found, part)
    return found


def _as_metadata(value: object, source: object) -> MetaData | list[MetaData] | None:
    """Accept a MetaData, several, or a declarative base (its ``metadata``); reject anything else."""
    if value is None or isinstance(value, MetaData):
        return value
    owned = getattr(value, "metadata", None)
    if isinstance(value, type) and isinstance(owned, MetaData):
        return owned
    if isinstance(value, list | tuple) and all(isinstance(m, MetaData) for m in value):
        return list(value)
    raise MigrationError(
        f"metadata {source!r} is a {type(value).__name__}, not a MetaData, a list of them or a "
        "declarative base class"
    )


def _escape(value: str) -> str:
    return value.replace("%", "%%")
