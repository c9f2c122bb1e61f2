"""Shared fixtures for the logging tests: a clean logging state and JSON-line readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mainspring.config import LogFileSettings, LoggingSettings
from mainspring.logging import shutdown_logging


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    shutdown_logging()
    yield
    shutdown_logging()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where a file-sink test writes its log."""
    return tmp_path / "logs" / "app.log"


@pytest.fixture
def file_settings(log_path: Path) -> Callable[..., LoggingSettings]:
    """Build LoggingSettings writing JSON to ``log_path`` (overrides as keyword arguments)."""

    def build(**overrides: Any) -> LoggingSettings:
        file_options = overrides.pop("file_options", {})
        file = LogFileSettings(path=log_path, **{"rotation": "none", **file_options})
        return LoggingSettings(**{"sink": "file", "file": file, **overrides})

    return build


@pytest.fixture
def read_json() -> Callable[[Path], list[dict[str, Any]]]:
    """Read a JSON-lines file into dicts, failing on any line that is not one JSON object."""

    def read(path: Path) -> list[dict[str, Any]]:
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
        return records

    return read


@pytest.fixture
def stdout_json(capsys: pytest.CaptureFixture[str]) -> Callable[[], list[dict[str, Any]]]:
    """Return the JSON lines written to stdout so far, as dicts."""

    def read() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    return read
