"""The first example of docs/db-models.md runs as written (on SQLite) and prints what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parents[3] / "docs" / "db-models.md"


def test_db_models_docs_first_example_prints_what_the_page_says(tmp_path: Path) -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    code = next(body for lang, body in blocks if lang == "python")
    expected = next(body for lang, body in blocks if lang == "")
    # A process of its own: the example declares a model on the shared Base, which must not leak
    # into this test session's metadata.
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if not line.startswith("{")]  # drop log lines
    assert printed == expected.strip().splitlines()
