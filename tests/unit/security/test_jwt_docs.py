"""The examples in docs/security-tokens.md run as written and print what the page implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[3] / "docs" / "security-tokens.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_issue": ["user-42 orders:read 2026-11"],
    "example_rotation": ["k1 k2", "['k2', 'k1']", "['k2']"],
    "example_revoked": ["user-42", "revoked | JWT rejected: token has been revoked"],
    "example_rejections": [
        "expired | JWT rejected: the token expired 100 s ago (leeway 30 s)",
        "alg_none | JWT rejected: alg 'none'",
        "too_large | JWT rejected: the token is 9000 bytes, over the 8192-byte limit",
    ],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    for expected in EXPECTED[name]:
        assert any(expected in line for line in out.splitlines()), f"{expected!r} not in:\n{out}"
