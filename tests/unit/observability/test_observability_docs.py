"""The examples in docs/observability.md run as written and print what the page implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import capture_logs

DOC = Path(__file__).parents[3] / "docs" / "observability.md"
BLOCK = re.compile(r"```python\n# (example_\w+)\.py\n(.*?)```", re.DOTALL)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))

EXPECTED = {
    "example_health": [
        "startup: fail",
        "startup: pass live: pass",
        "ready: warn 200",
        "  database: pass",
        "  cache: pass",
        "  disk: pass",
        "  payments-api: warn",
        "timed out after 0.1 s (not critical)",
        "cached: True",
    ],
    "example_metrics": [
        "text/plain",
        'http_requests_total{method="GET",route="/users/{user_id}",status="200"} 1.0',
        'http_requests_total{method="GET",route="/users/{user_id}",status="500"} 1.0',
        'messaging_messages_total{group="billing",outcome="handled",topic="orders"} 1.0',
        'cache_misses_total{backend="memory",cache="local"} 1.0',
        'messaging_broker_published_total{broker="default"} 1.0',
    ],
}


def test_docs_have_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_logs():  # the database and failed-check log lines are not part of what the page shows
        exec(compile(EXAMPLES[name], str(DOC), "exec"), {"__name__": name})
    out = capsys.readouterr().out
    lines = out.splitlines()
    for expected in EXPECTED[name]:
        assert any(expected in line for line in lines), f"{expected!r} not in:\n{out}"
