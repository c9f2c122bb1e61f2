"""The runnable examples of docs/security-auth.md run and keep their asserts true."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

_DOC = Path(__file__).parents[3] / "docs" / "security-auth.md"
_BLOCK = re.compile(r"```python\n(# (example_\w+)\.py\n.*?)```", re.S)
_EXAMPLES = {name: code for code, name in _BLOCK.findall(_DOC.read_text("utf-8"))}


def test_the_page_has_the_expected_examples() -> None:
    assert set(_EXAMPLES) == {
        "example_passwords",
        "example_policy",
        "example_rbac",
        "example_totp",
        "example_recovery",
    }


@pytest.mark.parametrize("name", sorted(_EXAMPLES))
def test_doc_example_runs(name: str, tmp_path: Path) -> None:
    script = tmp_path / f"{name}.py"
    script.write_text(_EXAMPLES[name], encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
