"""The Typer application behind the ``mainspring`` console script.

Every command reports a :class:`~mainspring.errors.MainspringError` as one clear line on stderr and exits
with status 2; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mainspring import __version__
from mainspring.cli._cache import cache_app
from mainspring.cli._config import config_app, show_config
from mainspring.cli._db import db_app
from mainspring.cli._messaging import messaging_app
from mainspring.errors import MainspringError

app = typer.Typer(
    name="mainspring",
    help="mainspring: the microservice chassis. Inspect configuration and run services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
app.add_typer(messaging_app, name="messaging")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mainspring {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """mainspring: the microservice chassis. Inspect configuration and run services."""


@app.command()
def demo(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to load (default: dev).")
    ] = None,
) -> None:
    """Show what the demo service will run with: the effective configuration and the commands.

    The demo service itself arrives with the service runtime; until then this prints the configuration
    it would load (embedded defaults, no servers needed) and the command reference.
    """
    typer.echo("mainspring demo: effective configuration (embedded defaults)\n")
    show_config(profile=profile, output_format="yaml", config_dir=None)
    typer.echo("\nCommands:\n")
    command = typer.main.get_command(app)
    with command.make_context("mainspring", ["--help"], resilient_parsing=True) as ctx:
        typer.echo(command.get_help(ctx))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a :class:`MainspringError` becomes one line on stderr and exit status 2.

    Usage errors are Typer's own: a usage line on stderr and exit status 2.
    """
    try:
        app(args=argv, prog_name="mainspring")
    except MainspringError as exc:
        first_line, *rest = str(exc).splitlines() or [type(exc).__name__]
        typer.echo(f"error: {first_line}", err=True)
        for line in rest:
            typer.echo(line, err=True)
        sys.exit(2)
