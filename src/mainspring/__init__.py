"""mainspring: a production-grade microservice chassis for Python.

Subsystems live in their own packages (``mainspring.config``, ``mainspring.logging``, ...); import the
names you need from there. This module only carries the version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mainspring")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
