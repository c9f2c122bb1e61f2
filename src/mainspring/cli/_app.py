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
from mainspring.cli._config import config_app
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
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind.")] = 8000,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to load (default: dev).")
    ] = None,
) -> None:
    """Run the orders demo on uvicorn: embedded defaults (SQLite file, memory cache and broker).

    Creates its tables, seeds an admin (password printed once) and products, and prints the URLs and
    curl commands. MAINSPRING_DATABASE__URL, MAINSPRING_CACHE__URL and MAINSPRING_MESSAGING__URL move it to
    PostgreSQL, Redis and RabbitMQ. Needs the web extra. See docs/demo.md.
    """
    from mainspring.demo import run_demo

    run_demo(host, port, profile=profile)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="The ASGI app as module:attribute (an app or a factory).")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")] = 1,
    factory: Annotated[
        bool, typer.Option("--factory", help="TARGET is a function that returns the app.")
    ] = False,
    graceful_timeout: Annotated[
        float, typer.Option("--graceful-timeout", min=0, help="Seconds in-flight requests get at shutdown.")
    ] = 30.0,
) -> None:
    """Serve an ASGI app (usually made by mainspring.web.create_app) on uvicorn.

    SIGTERM or SIGINT: uvicorn stops accepting connections and lets in-flight requests finish within
    --graceful-timeout; the app's lifespan then stops the service's components in reverse order.
    With --workers > 1, set PROMETHEUS_MULTIPROC_DIR so /metrics adds up every worker.
    """
    from mainspring.web._run import serve

    serve(target, host=host, port=port, workers=workers, factory=factory, graceful_timeout=graceful_timeout)


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
