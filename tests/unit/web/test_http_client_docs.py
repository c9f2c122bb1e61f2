"""The examples in docs/http-client.md run as written and print what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[3] / "docs" / "http-client.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_retries": ["200 4", "2.0"],
    "example_breaker": ["refused: circuit_open", "['order-42', 'order-42', 'order-42']"],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    # Log records (JSON lines on stdout by default) are not what the page shows.
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    assert lines == EXPECTED[name]
