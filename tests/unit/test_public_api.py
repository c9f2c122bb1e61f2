"""Every public package re-exports its names in a sorted ``__all__`` that names real objects."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mainspring


def _public_modules() -> list[str]:
    names = ["mainspring"]
    for info in pkgutil.walk_packages(mainspring.__path__, prefix="mainspring."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions and the rest.
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


@pytest.mark.parametrize("module_name", _public_modules())
def test_all_is_sorted_and_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.fail(f"{module_name} has no __all__")
    assert list(exported) == sorted(exported, key=_isort_key), f"{module_name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{module_name}.__all__ has duplicates"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names missing objects: {missing}"
