"""Guards for optional dependencies: one helper, one clear error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

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
