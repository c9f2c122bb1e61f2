"""File sinks: appending, size rotation, time rotation and retention, and unusable settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mainspring.config import LogFileSettings, LoggingSettings
from mainspring.errors import ConfigError
from mainspring.logging import configure_logging, get_logger, shutdown_logging
from mainspring.logging._sinks import FileSink

Read = Callable[[Path], list[dict[str, Any]]]
Settings = Callable[..., LoggingSettings]


def _wait_for_the_next_second() -> None:
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.01)


def _rotated(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name != path.name)


def test_file_sink_creates_the_directory_and_appends(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    configure_logging(file_settings())
    get_logger("svc").info("first")
    shutdown_logging()
    configure_logging(file_settings())
    get_logger("svc").info("second")
    shutdown_logging()

    assert [r["event"] for r in read_json(log_path)] == ["first", "second"]


@pytest.mark.parametrize("non_blocking", [False, True])
def test_size_rotation_keeps_backups_and_loses_nothing_recent(
    file_settings: Settings, log_path: Path, read_json: Read, non_blocking: bool
) -> None:
    handle = configure_logging(
        file_settings(
            non_blocking=non_blocking, file_options={"rotation": "size", "max_bytes": 2_000, "backups": 3}
        )
    )
    log = get_logger("svc")
    for i in range(200):
        log.info("rotating", n=i, padding="x" * 40)
        if non_blocking and i % 20 == 0:
            handle.flush()
    shutdown_logging()

    backups = _rotated(log_path)
    assert [p.name for p in backups] == ["app.log.1", "app.log.2", "app.log.3"]
    for path in [log_path, *backups]:
        assert path.stat().st_size <= 2_000
    # Newest records are in app.log, then .1, .2, .3: reading backwards gives one descending run.
    numbers = [r["n"] for path in [*reversed(backups), log_path] for r in read_json(path)]
    assert numbers == list(range(numbers[0], 200))


def test_size_rotation_with_no_backups_starts_afresh(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    configure_logging(file_settings(file_options={"rotation": "size", "max_bytes": 500, "backups": 0}))
    for i in range(50):
        get_logger("svc").info("line", n=i)
    shutdown_logging()

    assert _rotated(log_path) == []
    assert read_json(log_path)[-1]["n"] == 49
    assert log_path.stat().st_size <= 500


@pytest.mark.slow
def test_time_rotation_renames_by_period_and_applies_retention(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    log_path.parent.mkdir(parents=True)
    for stamp in ("2020-01-01_00-00-00", "2020-01-01_00-00-01"):
        (log_path.parent / f"app.log.{stamp}").write_text("old\n")
    _wait_for_the_next_second()  # so that the steps below fit inside one second
    second = int(time.time())
    configure_logging(file_settings(file_options={"rotation": "time", "when": "S", "backups": 1}))
    log = get_logger("svc")
    log.info("before")
    _wait_for_the_next_second()
    log.info("after")
    shutdown_logging()

    [rotated] = _rotated(log_path)
    assert rotated.name == f"app.log.{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime(second))}"
    assert [r["event"] for r in read_json(rotated)] == ["before"]
    assert [r["event"] for r in read_json(log_path)] == ["after"]


@pytest.mark.parametrize(
    ("when", "now", "expected"),
    [
        ("S", "2026-03-04T05:06:07", "2026-03-04T05:06:08"),
        ("M", "2026-03-04T05:06:07", "2026-03-04T05:07:00"),
        ("H", "2026-03-04T05:06:07", "2026-03-04T06:00:00"),
        ("D", "2026-03-04T05:06:07", "2026-03-05T00:00:00"),
        ("midnight", "2026-03-04T23:59:59", "2026-03-05T00:00:00"),
        ("W0", "2026-03-04T05:06:07", "2026-03-09T00:00:00"),  # a Wednesday; next Monday
        ("W2", "2026-03-04T05:06:07", "2026-03-11T00:00:00"),  # same weekday: a week later
    ],
)
def test_time_rotation_rolls_over_at_the_next_utc_boundary(
    tmp_path: Path, when: Any, now: str, expected: str
) -> None:
    import calendar

    def epoch(text: str) -> float:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))

    sink = FileSink(LogFileSettings(path=tmp_path / "a.log", rotation="time", when=when))
    assert sink._compute_rollover(epoch(now)) == epoch(expected)


def test_file_sink_without_a_file_section_is_a_config_error() -> None:
    # LoggingSettings validation refuses this too; model_construct skips it, as a hand-built object might.
    with pytest.raises(ConfigError, match=r"logging\.file") as info:
        configure_logging(LoggingSettings.model_construct(sink="file", file=None))
    assert info.value.problems[0].path == "logging.file"


def test_a_log_directory_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = LoggingSettings(sink="file", file=LogFileSettings(path=blocker / "app.log"))
    with pytest.raises(ConfigError, match="cannot open the log file"):
        configure_logging(settings)


def test_a_log_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    settings = LoggingSettings(sink="file", file=LogFileSettings(path=tmp_path))
    with pytest.raises(ConfigError, match="cannot open the log file") as info:
        configure_logging(settings)
    assert info.value.problems[0].path == "logging.file.path"


def test_a_failed_configuration_leaves_the_previous_one_in_place(
    file_settings: Settings, log_path: Path, read_json: Read, tmp_path: Path
) -> None:
    configure_logging(file_settings())
    with pytest.raises(ConfigError):
        configure_logging(LoggingSettings(sink="file", file=LogFileSettings(path=tmp_path)))
    get_logger("svc").info("still here")
    shutdown_logging()

    assert [r["event"] for r in read_json(log_path)] == ["still here"]
