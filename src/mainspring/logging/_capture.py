"""Capturing records as dicts instead of writing them: the machinery behind ``capture_logs``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mainspring.logging import _configure
from mainspring.logging._configure import ensure_structlog_routed, exception_view, restore_structlog
from mainspring.logging._logger import State, current_state, install_state, level_number
from mainspring.logging._pipeline import build_pipeline
from mainspring.logging._stdlib import StdlibBridge


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return record


@contextmanager
def capturing(level: int | str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Send every record to a list (as event dicts) instead of the sink, until the block ends.

    The records are complete up to rendering: timestamp, level, logger, event, context ids, fields,
    redaction applied as configured, exceptions as structured dicts. ``level`` lowers or raises the
    root level for the block (named levels still apply); by default the levels in force are kept.
    """
    captured: list[dict[str, Any]] = []
    previous = current_state()
    redactor = previous.redactor
    pipeline = build_pipeline(
        redactor=redactor,
        render=_identity,
        write=captured.append,
        exception=exception_view(redactor, as_text=False),
    )
    root_level = previous.root_level if level is None else level_number(level)
    state = State(
        pipeline=pipeline,
        settings=previous.settings,
        root_level=root_level,
        levels=previous.levels,
        redactor=redactor,
    )
    root = logging.getLogger()
    saved_root_level = root.level
    temporary_bridge: StdlibBridge | None = None
    structlog_saved: dict[str, Any] | None = None
    routed_here = _configure.active_bridge() is None
    if routed_here:
        # Not configured: the stdlib and structlog need pointing at us for the block's duration.
        temporary_bridge = StdlibBridge()
        root.addHandler(temporary_bridge)
        structlog_saved = ensure_structlog_routed()
    root.setLevel(root_level)
    install_state(state)
    try:
        yield captured
    finally:
        # A configure_logging() inside the block wins; otherwise the previous configuration comes back.
        if current_state() is state:
            install_state(previous)
        root.setLevel(saved_root_level)
        if temporary_bridge is not None:
            root.removeHandler(temporary_bridge)
        if routed_here:
            restore_structlog(structlog_saved)
