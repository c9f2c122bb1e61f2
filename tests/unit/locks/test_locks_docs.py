"""The examples in docs/locks.md run as written (on the memory backend)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[3] / "docs" / "locks.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == {"example_quick_start", "example_fencing", "example_lost"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    expected = {
        "example_quick_start": "lock_timeout",
        "example_fencing": "'fence': ",
        "example_lost": "lock_lost",
    }[name]
    assert expected in out
