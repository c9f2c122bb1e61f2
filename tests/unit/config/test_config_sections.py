"""Validators of the shared sections, directly and through the loader."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from mainspring.config import LogFileSettings, LoggingSettings, load_settings
from mainspring.errors import ConfigError


def test_file_sink_without_a_file_section_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="sink 'file' needs a 'file' section"):
        LoggingSettings(sink="file")


def test_file_sink_with_a_file_section_is_accepted() -> None:
    settings = LoggingSettings(sink="file", file=LogFileSettings(path=Path("app.log")))
    assert settings.file is not None
    assert settings.file.path == Path("app.log")


def test_file_sink_problem_points_at_the_logging_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config/base.yaml").write_text("debug: false\nlogging:\n  sink: file\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, env_file=None)
    (problem,) = info.value.problems
    assert (problem.path, problem.source) == ("logging", "config/base.yaml:2")
    assert problem.reason.startswith("sink 'file' needs")
