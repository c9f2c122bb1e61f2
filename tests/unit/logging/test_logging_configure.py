"""configure_logging / shutdown_logging: settings forms, reconfiguration without leaks, restoration."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from mainspring.config import LoggingSettings
from mainspring.errors import ConfigError
from mainspring.logging import LoggingHandle, configure_logging, get_logger, shutdown_logging

Read = Callable[[Path], list[dict[str, Any]]]
Settings = Callable[..., LoggingSettings]
Lines = Callable[[], list[dict[str, Any]]]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mainspring-log-writer"]


def test_accepts_a_settings_object_with_a_logging_section(stdout_json: Lines) -> None:
    settings = SimpleNamespace(logging=LoggingSettings(level="WARNING"))
    handle = configure_logging(settings)
    get_logger("svc").info("hidden")
    get_logger("svc").warning("shown")

    assert isinstance(handle, LoggingHandle)
    assert handle.settings.level == "WARNING"
    assert [r["event"] for r in stdout_json()] == ["shown"]


def test_accepts_the_service_settings(stdout_json: Lines) -> None:
    from mainspring.config import Settings

    settings = Settings(logging=LoggingSettings(level="ERROR"), _env_file=None)  # type: ignore[call-arg]
    configure_logging(settings)
    get_logger("svc").warning("hidden")
    get_logger("svc").error("shown")

    assert [r["event"] for r in stdout_json()] == ["shown"]


@pytest.mark.parametrize("bad", [None, {"level": "INFO"}, SimpleNamespace(logging={"level": "INFO"})])
def test_anything_else_is_a_config_error_naming_what_was_given(bad: object) -> None:
    with pytest.raises(ConfigError, match="needs a LoggingSettings"):
        configure_logging(bad)


def test_reconfiguring_closes_the_previous_writer_and_file(
    file_settings: Settings, log_path: Path, read_json: Read, tmp_path: Path
) -> None:
    first = configure_logging(file_settings(non_blocking=True))
    get_logger("svc").info("to the first file")
    second_path = tmp_path / "second.log"
    second = configure_logging(
        LoggingSettings(sink="file", file={"path": second_path, "rotation": "none"}, non_blocking=True)
    )
    get_logger("svc").info("to the second file")

    assert not first.active
    assert second.active
    assert len(_writer_threads()) == 1
    shutdown_logging()
    assert [r["event"] for r in read_json(log_path)] == ["to the first file"]
    assert [r["event"] for r in read_json(second_path)] == ["to the second file"]


def test_many_reconfigurations_leak_no_threads_or_handlers(file_settings: Settings) -> None:
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    for index in range(10):
        configure_logging(file_settings(non_blocking=index % 2 == 0))
        get_logger("svc").info("configured", index=index)
        assert len(root.handlers) == 1
        assert len(_writer_threads()) <= 1
    shutdown_logging()

    assert _writer_threads() == []
    assert root.handlers == handlers_before


def test_shutdown_restores_the_root_handlers_and_structlog_config() -> None:
    root = logging.getLogger()
    mine = logging.NullHandler()
    root.addHandler(mine)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        configure_logging(LoggingSettings())
        assert mine not in root.handlers
        shutdown_logging()
        assert mine in root.handlers
        assert structlog.get_config()["cache_logger_on_first_use"] is False
    finally:
        root.removeHandler(mine)
        structlog.reset_defaults()


def test_shutdown_is_idempotent_and_handles_close_once() -> None:
    handle = configure_logging(LoggingSettings(non_blocking=True))
    assert handle.close()
    assert not handle.active
    assert handle.close()
    assert shutdown_logging()
    assert shutdown_logging()


def test_the_handle_is_a_context_manager(file_settings: Settings, log_path: Path, read_json: Read) -> None:
    with configure_logging(file_settings(non_blocking=True)):
        get_logger("svc").info("inside")
    assert _writer_threads() == []
    assert [r["event"] for r in read_json(log_path)] == ["inside"]


def test_closing_a_replaced_handle_leaves_the_current_configuration_alone(stdout_json: Lines) -> None:
    old = configure_logging(LoggingSettings())
    current = configure_logging(LoggingSettings(level="ERROR"))
    old.close()
    get_logger("svc").warning("hidden")
    get_logger("svc").error("shown")

    assert current.active
    assert [r["event"] for r in stdout_json()] == ["shown"]


def test_blocking_mode_stats_report_no_queue() -> None:
    handle = configure_logging(LoggingSettings())
    assert handle.stats.written is None
    assert handle.stats.dropped == 0
    assert handle.flush()


def test_console_format_is_readable_and_uncoloured_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    from mainspring.context import bind_context

    configure_logging(LoggingSettings(format="console"))
    with bind_context(correlation_id="corr-5"):
        get_logger("shop").info("order placed", order_id=42, password="hunter2")
    logging.getLogger("uvicorn").warning("stdlib too")

    first, second = capsys.readouterr().out.splitlines()
    assert "\x1b[" not in first
    assert "[info" in first
    assert "order placed" in first
    assert "order_id=42" in first
    assert "correlation_id=corr-5" in first
    assert "[shop]" in first
    assert "hunter2" not in first
    assert "stdlib too" in second
    assert "[uvicorn]" in second
