"""The examples in docs/logging.md run as written and print what the page shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "logging.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_logging_page_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert [language for language, _ in blocks].count("python") >= 3
    namespace: dict[str, Any] = {"__name__": "logging_docs"}
    for index, (language, body) in enumerate(blocks):
        if language != "python":
            continue
        where = f"{DOC.name} block {index + 1}"
        # dont_inherit: the page is read as plain Python, without this module's __future__ import.
        exec(compile(body, where, "exec", dont_inherit=True), namespace)
        printed = capsys.readouterr().out
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        if following[0] == "text":
            assert printed == following[1], where
