"""The strategy and query-cache examples in docs/cache.md run as written and print what the page shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import capture_logs

DOC = Path(__file__).parents[3] / "docs" / "cache.md"
EXAMPLE = re.compile(r"```python\n# (extra_\w+)\.py\n(.*?)```\n+prints[^\n]*\n+```text\n(.*?)```", re.DOTALL)
EXAMPLES = {name: (code, printed) for name, code, printed in EXAMPLE.findall(DOC.read_text(encoding="utf-8"))}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == {"extra_strategies", "extra_query_cache"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_prints_what_the_page_says(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed = EXAMPLES[name]
    with capture_logs():
        exec(compile(code, f"{DOC.name}:{name}", "exec"), {"__name__": name})
    assert capsys.readouterr().out == printed
