"""The examples in docs/resilience.md run as written and print what the page implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import capture_logs

DOC = Path(__file__).parents[3] / "docs" / "resilience.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_timeout": ["FAST", "deadline_exceeded 0.05 | inventory check did not finish within its 0.05 s"],
    "example_retry": ["{'EUR': 1.0} after 3 calls", "OSError mainspring retry: gave up on read_config"],
    "example_breaker": [
        "event: closed -> open",
        "refused: circuit_open retry soon: True",
        "event: open -> half_open",
        "event: half_open -> closed",
        "charged 10",
        "closed 4 1 1",
    ],
    "example_bulkhead": [
        "[0, 1, 2, 'BulkheadFullError', 'BulkheadFullError']",
        "accepted 3 rejected 2 active 0",
    ],
    "example_stacked": ["gave up: CircuitOpenError after 3 attempts", "open"],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_logs():  # the retry and state-change warnings are not part of what the page shows
        exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    lines = out.splitlines()
    for expected in EXPECTED[name]:
        assert any(expected in line for line in lines), f"{expected!r} not in:\n{out}"
