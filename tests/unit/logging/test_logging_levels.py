"""Levels: the root level and per-logger levels, for mainspring, structlog and stdlib loggers alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from mainspring.config import LoggingSettings
from mainspring.logging import configure_logging, get_logger, shutdown_logging

Lines = Callable[[], list[dict[str, Any]]]


def test_records_below_the_root_level_are_dropped(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(level="WARNING"))
    log = get_logger("svc")
    log.info("hidden")
    log.warning("shown")
    logging.getLogger("lib").info("hidden too")
    logging.getLogger("lib").error("shown too")

    assert [r["event"] for r in stdout_json()] == ["shown", "shown too"]


def test_per_logger_levels_apply_to_the_logger_and_its_children(stdout_json: Lines) -> None:
    configure_logging(
        LoggingSettings(level="INFO", levels={"sqlalchemy.engine": "WARNING", "shop.debugging": "debug"})
    )
    get_logger("sqlalchemy.engine").info("engine info: hidden")
    get_logger("sqlalchemy.engine.base").info("child info: hidden")
    get_logger("sqlalchemy.engine").warning("engine warning")
    get_logger("sqlalchemy.pool").info("sibling info")
    get_logger("shop.debugging.cart").debug("child debug")
    get_logger("shop").debug("root debug: hidden")

    assert [r["event"] for r in stdout_json()] == ["engine warning", "sibling info", "child debug"]


def test_per_logger_levels_apply_to_stdlib_loggers(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(levels={"sqlalchemy.engine": "WARNING", "chatty": "DEBUG"}))
    logging.getLogger("sqlalchemy.engine.Engine").info("hidden")
    logging.getLogger("sqlalchemy.engine.Engine").warning("shown")
    logging.getLogger("chatty").debug("debug shown")

    assert [r["event"] for r in stdout_json()] == ["shown", "debug shown"]


def test_per_logger_levels_apply_to_structlog_loggers(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(levels={"noisy": "ERROR"}))
    structlog.get_logger("noisy").warning("hidden")
    structlog.get_logger("noisy").error("shown")

    assert [r["event"] for r in stdout_json()] == ["shown"]


def test_loggers_made_before_a_reconfiguration_follow_it(stdout_json: Lines) -> None:
    log = get_logger("early.module")
    configure_logging(LoggingSettings(level="ERROR"))
    log.warning("hidden")
    configure_logging(LoggingSettings(level="DEBUG"))
    log.debug("shown")

    assert [r["event"] for r in stdout_json()] == ["shown"]


def test_is_enabled_for_reflects_the_effective_level() -> None:
    configure_logging(LoggingSettings(level="INFO", levels={"quiet": "ERROR"}))
    assert get_logger("svc").is_enabled_for("info")
    assert not get_logger("svc").is_enabled_for(logging.DEBUG)
    assert not get_logger("quiet.child").is_enabled_for("warning")


def test_stdlib_levels_are_restored_after_shutdown() -> None:
    engine = logging.getLogger("sqlalchemy.engine")
    engine.setLevel(logging.INFO)
    root_level = logging.getLogger().level
    configure_logging(LoggingSettings(level="DEBUG", levels={"sqlalchemy.engine": "ERROR"}))
    assert engine.level == logging.ERROR
    assert logging.getLogger().level == logging.DEBUG

    shutdown_logging()
    assert engine.level == logging.INFO
    assert logging.getLogger().level == root_level
    engine.setLevel(logging.NOTSET)


def test_a_reconfiguration_forgets_levels_it_no_longer_names() -> None:
    configure_logging(LoggingSettings(levels={"one": "ERROR"}))
    configure_logging(LoggingSettings(levels={"two": "ERROR"}))
    assert logging.getLogger("one").level == logging.NOTSET
    assert logging.getLogger("two").level == logging.ERROR


def test_an_unknown_level_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        get_logger("svc").log("loud", "x")
