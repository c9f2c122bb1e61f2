"""The first example of docs/db.md runs as written (on SQLite) and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[3] / "docs" / "db.md"


def test_db_docs_first_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    source = code.group(1).replace("sqlite+aiosqlite:///app.db", f"sqlite+aiosqlite:///{tmp_path}/app.db")
    namespace: dict[str, object] = {"__name__": "db_docs_example"}
    exec(compile(source, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "unique_violation" in out
    assert "['ada@example.com']" in out
    assert "PoolStats(" in out
    assert namespace["sent"] == ["welcome mail"]
