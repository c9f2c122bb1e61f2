"""The examples in docs/tracing.md run as written and print what the page says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainspring.observability._tracing import shutdown_tracing

DOC = Path(__file__).parents[3] / "docs" / "tracing.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_traced": ["['orders.place', 'orders.price', 'orders.save']", "True", "True", "28.5"],
    "example_fastapi": ["['fastapi']", "['GET /orders/{order_id}']"],
}


@pytest.fixture(autouse=True)
def _tracing_off_afterwards() -> Iterator[None]:
    yield
    shutdown_tracing()


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    assert lines == EXPECTED[name]
