"""capture_logs: event dicts from every kind of logger, configured or not, restored afterwards."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from mainspring.config import LoggingSettings
from mainspring.context import bind_context
from mainspring.logging import MASK, configure_logging, get_logger, shutdown_logging
from mainspring.testing import capture_logs

Read = Callable[[Path], list[dict[str, Any]]]
Settings = Callable[..., LoggingSettings]


def test_captures_structlog_style_and_stdlib_records_without_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capture_logs() as logs:
        get_logger("shop").info("order placed", order_id=1)
        structlog.get_logger("plain.structlog").warning("structlog too")
        logging.getLogger("third.party").error("stdlib %s", "too")

    assert [(r["logger"], r["level"], r["event"]) for r in logs] == [
        ("shop", "info", "order placed"),
        ("plain.structlog", "warning", "structlog too"),
        ("third.party", "error", "stdlib too"),
    ]
    assert logs[0]["order_id"] == 1
    assert capsys.readouterr().out == ""  # captured, not written


def test_captured_dicts_carry_context_ids_and_are_redacted() -> None:
    with bind_context(correlation_id="corr-1"), capture_logs() as logs:
        get_logger("svc").info("Bearer abc", password="p", nested={"token": "t"})

    [record] = logs
    assert record["correlation_id"] == "corr-1"
    assert record["event"] == f"Bearer {MASK}"
    assert record["password"] == MASK
    assert record["nested"] == {"token": MASK}
    assert record["timestamp"].endswith("Z")


def test_captured_exceptions_are_structured() -> None:
    with capture_logs() as logs:
        try:
            raise KeyError("k")
        except KeyError:
            get_logger("svc").exception("failed")

    assert logs[0]["exception"]["type"] == "KeyError"
    assert isinstance(logs[0]["exception"]["frames"], list)


def test_capture_follows_the_configured_redaction_and_levels() -> None:
    configure_logging(LoggingSettings(level="WARNING", redact_keys=["pin"]))
    with capture_logs() as logs:
        get_logger("svc").info("below the level")
        get_logger("svc").warning("kept", pin="1234", password="visible")

    [record] = logs
    assert record["pin"] == MASK
    assert record["password"] == "visible"


def test_capture_level_can_lower_the_root_level() -> None:
    configure_logging(LoggingSettings(level="WARNING", levels={"quiet": "ERROR"}))
    with capture_logs(level="DEBUG") as logs:
        get_logger("svc").debug("debug now visible")
        logging.getLogger("lib").debug("stdlib debug visible")
        get_logger("quiet").warning("per-logger level still applies")

    assert [r["event"] for r in logs] == ["debug now visible", "stdlib debug visible"]


def test_the_configured_sink_resumes_after_capture(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    configure_logging(file_settings(non_blocking=True))
    log = get_logger("svc")
    log.info("before")
    with capture_logs() as logs:
        log.info("during")
    log.info("after")
    shutdown_logging()

    assert [r["event"] for r in logs] == ["during"]
    assert [r["event"] for r in read_json(log_path)] == ["before", "after"]


def test_capture_without_configuration_leaves_the_root_logger_as_it_was() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    before = structlog.is_configured()
    with capture_logs(level="DEBUG"):
        pass

    assert root.handlers == handlers
    assert root.level == level
    assert structlog.is_configured() == before


def test_captures_nest() -> None:
    with capture_logs() as outer:
        get_logger("svc").info("outer 1")
        with capture_logs() as inner:
            get_logger("svc").info("inner")
        get_logger("svc").info("outer 2")

    assert [r["event"] for r in outer] == ["outer 1", "outer 2"]
    assert [r["event"] for r in inner] == ["inner"]


def test_the_pytest_plugin_fixture_captures(captured_logs: list[dict[str, Any]]) -> None:
    get_logger("svc").info("seen by the fixture")
    assert captured_logs[-1]["event"] == "seen by the fixture"
