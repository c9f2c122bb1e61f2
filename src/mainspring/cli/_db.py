"""``mainspring db``: create, apply and inspect the service's database migrations (Alembic).

The database comes from the service settings (``database.url``, or ``databases.<name>`` with
``--database``), or from ``--url``. Every failure is a :class:`~mainspring.errors.MainspringError`, which
``mainspring.cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mainspring.cli._config import resolve_settings_class
from mainspring.config import LoggingSettings, load_settings
from mainspring.db._database import Database
from mainspring.db._migrate import MigrationStep, Migrator, RevisionInfo
from mainspring.db.migrations import MigrationError
from mainspring.logging import configure_logging, shutdown_logging

__all__ = ["db_app"]

T = TypeVar("T")

db_app = typer.Typer(
    help="Database migrations (Alembic): create revisions, upgrade, downgrade, inspect.", no_args_is_help=True
)

DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="The migrations folder.", show_default=True, file_okay=False)
]
UrlOption = Annotated[
    str | None, typer.Option("--url", help="Database URL; overrides the settings (default: database.url).")
]
DatabaseOption = Annotated[
    str, typer.Option("--database", help="Which database of the settings: 'default' or a key of databases.")
]
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
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0.1, help="Seconds to wait for the database (default: its start_timeout)."),
]
MetadataOption = Annotated[
    str | None,
    typer.Option(
        "--metadata", help="Your models' metadata as module:attr (e.g. myservice.models:Base.metadata)."
    ),
]

_DEFAULT_DIR = Path("migrations")


def _database(
    *,
    url: str | None,
    name: str,
    settings: str | None,
    profile: str | None,
    config_dir: Path | None,
    timeout: float | None,
) -> Database:
    """The database to migrate: ``--url``, else the named database of the service settings."""
    if url is not None:
        if timeout is None:
            return Database(url, name=name)
        return Database(url, name=name, start_timeout=timeout)
    loaded = load_settings(resolve_settings_class(settings), profile=profile, config_dir=config_dir)
    if name == "default":
        section = loaded.database
    elif name in loaded.databases:
        section = loaded.databases[name]
    else:
        known = ", ".join(["default", *sorted(loaded.databases)])
        raise MigrationError(f"no database named {name!r} in the settings; known: {known}")
    if timeout is not None:
        section = section.model_copy(update={"start_timeout": timeout})
    return Database.from_settings(section, name=name)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # The command's own lines are its output; the database's start/stop log lines would only clutter
    # them, so only warnings and errors are logged, to stderr.
    # asyncmy logs each MySQL note (such as "Name 'pk_x' ignored for PRIMARY key") as a warning.
    configure_logging(
        LoggingSettings(level="WARNING", format="console", sink="stderr", levels={"asyncmy": "ERROR"})
    )
    try:
        return asyncio.run(coro)
    finally:
        shutdown_logging()


def _labels(info: RevisionInfo) -> str:
    marks = [*info.branch_labels, *(["head"] if info.is_head else [])]
    return f" ({', '.join(marks)})" if marks else ""


def _print_steps(steps: Sequence[MigrationStep], nothing: str) -> None:
    if not steps:
        typer.echo(nothing)
    for step in steps:
        verb = "applied " if step.direction == "upgrade" else "reverted"
        typer.echo(f"{verb} {step.revision}  {step.message}")


def _print_current(current: Sequence[RevisionInfo]) -> None:
    if not current:
        typer.echo("at: base (no revision applied)")
    for info in current:
        typer.echo(f"at: {info.id}{_labels(info)}  {info.message}")


@db_app.command("init")
def _init(
    directory: DirOption = _DEFAULT_DIR,
    metadata: MetadataOption = None,
) -> None:
    """Create the migrations folder (env.py, script.py.mako, versions/)."""
    folder = Migrator(script_location=directory).init(metadata=metadata)
    typer.echo(f"created {folder}/ with env.py, script.py.mako and versions/")
    if metadata is None:
        typer.echo(f"next: set target_metadata in {folder / 'env.py'} to your models' metadata")
    typer.echo("then: mainspring db upgrade   (creates mainspring's own tables)")
    typer.echo('      mainspring db revision -m "create my tables" --autogenerate')


@db_app.command("revision")
def _revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the revision does.")],
    autogenerate: Annotated[
        bool,
        typer.Option("--autogenerate", help="Write the differences between the models and the database."),
    ] = False,
    rev_id: Annotated[str | None, typer.Option("--rev-id", help="Revision id (default: random).")] = None,
    directory: DirOption = _DEFAULT_DIR,
    metadata: MetadataOption = None,
    url: UrlOption = None,
    database: DatabaseOption = "default",
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Write a new revision file into the migrations folder."""
    target = None
    if autogenerate:
        target = _database(
            url=url, name=database, settings=settings, profile=profile, config_dir=config_dir, timeout=timeout
        )
    migrator = Migrator(target, script_location=directory, metadata=metadata)
    written = _run(migrator.revision(message, autogenerate=autogenerate, rev_id=rev_id))
    if written is None:
        typer.echo("no differences between the models and the database: no revision written")
        return
    typer.echo(f"created revision {written.id}{_labels(written)}: {written.path}")


@db_app.command("upgrade")
def _upgrade(
    revision: Annotated[
        str,
        typer.Argument(help="Target: heads (all branches), app@head, mainspring@head, a revision id, +1."),
    ] = "heads",
    directory: DirOption = _DEFAULT_DIR,
    url: UrlOption = None,
    database: DatabaseOption = "default",
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Apply the revisions up to REVISION (default: heads)."""
    target = _database(
        url=url, name=database, settings=settings, profile=profile, config_dir=config_dir, timeout=timeout
    )
    migrator = Migrator(target, script_location=directory)

    async def upgrade() -> tuple[list[MigrationStep], list[RevisionInfo]]:
        # One start for both calls: the database answers once or the command fails once.
        async with target:
            return await migrator.upgrade(revision), await migrator.current()

    steps, current = _run(upgrade())
    _print_steps(steps, "nothing to apply: already up to date")
    _print_current(current)


@db_app.command("downgrade")
def _downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target: base (everything), app@base, app@-1, a revision id.")
    ],
    directory: DirOption = _DEFAULT_DIR,
    url: UrlOption = None,
    database: DatabaseOption = "default",
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Revert revisions down to REVISION."""
    target = _database(
        url=url, name=database, settings=settings, profile=profile, config_dir=config_dir, timeout=timeout
    )
    migrator = Migrator(target, script_location=directory)

    async def downgrade() -> tuple[list[MigrationStep], list[RevisionInfo]]:
        async with target:
            return await migrator.downgrade(revision), await migrator.current()

    steps, current = _run(downgrade())
    _print_steps(steps, "nothing to revert")
    _print_current(current)


@db_app.command("current")
def _current(
    directory: DirOption = _DEFAULT_DIR,
    url: UrlOption = None,
    database: DatabaseOption = "default",
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
    timeout: TimeoutOption = None,
) -> None:
    """Show the revisions the database is at, and how many are pending."""
    target = _database(
        url=url, name=database, settings=settings, profile=profile, config_dir=config_dir, timeout=timeout
    )
    migrator = Migrator(target, script_location=directory)

    async def current() -> tuple[list[RevisionInfo], list[RevisionInfo]]:
        async with target:
            return await migrator.current(), await migrator.pending()

    applied, pending = _run(current())
    _print_current(applied)
    if pending:
        typer.echo(f"pending: {len(pending)} revision(s), run `mainspring db upgrade`")
    else:
        typer.echo("up to date")


@db_app.command("history")
def _history(directory: DirOption = _DEFAULT_DIR) -> None:
    """List every revision (the service's and mainspring's), newest first."""
    revisions = Migrator(script_location=directory).history()
    if not revisions:
        typer.echo("no revisions yet: mainspring db revision -m MESSAGE [--autogenerate]")
    for info in revisions:
        parents = ", ".join(info.down_revisions) or "<base>"
        typer.echo(f"{parents} -> {info.id}{_labels(info)}  {info.message}")
