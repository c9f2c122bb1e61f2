"""The examples in docs/events.md run as written and print what the page implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import capture_logs

DOC = Path(__file__).parents[3] / "docs" / "events.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_bus": ["welcome mail to ada@example.com", "count user 1", "handled by 2 of 3; failures: 1"],
    "example_outbox": ["handled ['A-1']", "backlog 0"],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_logs():
        exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    for expected in EXPECTED[name]:
        assert expected in out.splitlines(), f"{expected!r} not in:\n{out}"
