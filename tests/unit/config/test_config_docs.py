"""The examples in docs/config.md run as written and print what the page shows."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from mainspring.cli import main

DOC = Path(__file__).resolve().parents[3] / "docs" / "config.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FILE_MARKER = re.compile(r"# (\S+)\n")


def run_cli(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    code: object = 0
    try:
        main(shlex.split(command))
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 2), f"{command!r} exited with {code}"
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_config_page_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("MAINSPRING_", "SHOP_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert blocks, "no code blocks found"
    namespace: dict[str, Any] = {"__name__": "config_docs"}
    for index, (language, body) in enumerate(blocks):
        where = f"{DOC.name} block {index + 1} ({language})"
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        if language == "yaml" and (marker := FILE_MARKER.match(body)):
            target = tmp_path / marker.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body[marker.end() :], encoding="utf-8")
        elif language == "python":
            # dont_inherit: the page is read as plain Python, without this module's __future__ import.
            exec(compile(body, where, "exec", dont_inherit=True), namespace)
            printed = capsys.readouterr().out
            if following[0] == "text":
                assert printed == following[1], where
        elif language == "console":
            command, _, expected = body.partition("\n")
            assert command.startswith("$ mainspring "), where
            assert run_cli(command.removeprefix("$ mainspring "), capsys) == expected, where
