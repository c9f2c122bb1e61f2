"""The examples in docs/messaging.md run as written and print what the page implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import capture_logs

DOC = Path(__file__).parents[3] / "docs" / "messaging.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_basics": ["billing order 42 for ada type orders.placed.v1"],
    "example_context": ["correlation checkout-7 caused by this message: True"],
    "example_dead_letters": [
        "attempts [1, 2, 3]",
        "ms_dlq_reason = exhausted",
        "ms_dlq_error_type = builtins.ConnectionError",
        "ms_dlq_error_message = smtp server unreachable",
        "ms_attempt = 3",
        "ms_dlq_group = sender",
    ],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_logs():  # retry warnings are not part of what the page shows
        exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    for expected in EXPECTED[name]:
        assert expected in out.splitlines(), f"{expected!r} not in:\n{out}"
