"""Guards for optional dependencies: one helper, one clear error naming the extra to install."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from mainspring.errors import MissingDependencyError


def require(module: str, *, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``mainspring[extra]``.

    ``feature`` names what needs the module in the message (``"the Redis backend"``); it defaults to
    the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = feature or f"'{module}'"
        raise MissingDependencyError(
            f"{what} needs the optional dependency '{module}': install 'mainspring[{extra}]'",
            details={"module": module, "extra": extra},
        ) from exc


def lazy_exports(package: str, module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` for ``package`` that imports ``names`` from ``module`` on first use.

    For names whose module is costly to import (SQLAlchemy, Alembic) and that many users never touch;
    the value is stored in the package once imported, so later lookups are plain attribute reads.
    """
    lazy = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in lazy:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
