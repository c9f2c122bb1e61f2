"""The ``mainspring`` command line: ``mainspring --help`` lists the commands."""

from mainspring.cli._app import app, main

__all__ = ["app", "main"]
