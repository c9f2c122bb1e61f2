"""Loggers and the live configuration they follow.

Every logger name has one :class:`Route`, created on first use and kept for the life of the process.
A route holds the name, the effective level and the current ``emit`` function; installing a new
configuration (``configure_logging``, ``capture_logs``) rewrites every route in place. Loggers hold
their route, so a logger made at import time (``log = get_logger(__name__)``), or cached by structlog's
``cache_logger_on_first_use``, follows every reconfiguration without being made again.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from structlog import BoundLoggerBase

from mainspring.config._sections import LoggingSettings
from mainspring.logging._pipeline import Emit, Pipeline
from mainspring.logging._redact import Redactor

DEBUG, INFO, WARNING, ERROR, CRITICAL = (
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)
_LEVEL_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error", CRITICAL: "critical"}
_NO_PROCESSORS: list[Any] = []


def level_number(level: int | str) -> int:
    """Return the numeric level for ``level`` (``"info"``, ``"INFO"`` or ``20``)."""
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return number


@dataclass(frozen=True, slots=True)
class State:
    """One installed configuration: the pipeline and the levels."""

    pipeline: Pipeline
    settings: LoggingSettings
    root_level: int
    levels: Mapping[str, int] = field(default_factory=dict)
    #: The redactor in force (``None`` when redaction is off); capture_logs reuses it.
    redactor: Redactor | None = None

    def level_for(self, name: str) -> int:
        """Return the level for logger ``name``: the closest configured ancestor's, else the root's."""
        levels = self.levels
        probe = name
        while levels:
            found = levels.get(probe)
            if found is not None:
                return found
            cut = probe.rfind(".")
            if cut < 0:
                break
            probe = probe[:cut]
        return self.root_level


class Route:
    """The destination of one logger name: its effective level and the current ``emit``."""

    __slots__ = ("emit", "level", "name")

    def __init__(self, name: str, level: int, emit: Emit) -> None:
        self.name = name
        self.level = level
        self.emit = emit

    def __repr__(self) -> str:
        return f"<Route {self.name!r} level={logging.getLevelName(self.level)}>"


_lock = threading.RLock()
_routes: dict[str, Route] = {}
_state: State | None = None


def current_state() -> State:
    """Return the installed configuration (the defaults until ``configure_logging`` runs)."""
    state = _state
    if state is None:
        from mainspring.logging._configure import default_state

        with _lock:
            if _state is None:
                install_state(default_state())
            state = _state
    assert state is not None
    return state


def install_state(state: State) -> State | None:
    """Make ``state`` the live configuration, rewriting every route; return the previous one."""
    global _state
    with _lock:
        previous = _state
        _state = state
        emit = state.pipeline.emit
        for route in _routes.values():
            route.level = state.level_for(route.name)
            route.emit = emit
        return previous


def reset_locks_after_fork() -> None:
    """In a forked child: replace the registry lock, which a parent thread may have held."""
    global _lock
    _lock = threading.RLock()


def route_for(name: str) -> Route:
    """Return the route for logger ``name``, creating it on first use."""
    route = _routes.get(name)
    if route is None:
        state = current_state()
        with _lock:
            route = _routes.get(name)
            if route is None:
                state = _state or state
                route = Route(name, state.level_for(name), state.pipeline.emit)
                _routes[name] = route
    return route


def caller_module(depth: int) -> str:
    """Return the ``__name__`` of the module ``depth`` frames up, skipping structlog's and ours."""
    frame = sys._getframe(depth + 1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("structlog", "mainspring.logging")):
            return str(module) or "root"
        frame = frame.f_back  # type: ignore[assignment]
    return "root"


class BoundLogger(BoundLoggerBase):
    """A structlog-style logger: ``log.info("order placed", order_id=1)``, ``.bind(...)``, ``.exception``.

    Bound values (``bind``/``unbind``/``new``) and call fields become fields of the record, together
    with the ids of the current :mod:`mainspring.context`. Positional arguments are interpolated
    ``%``-style into the event. A call below the logger's level costs one comparison.
    """

    _logger: Route

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at DEBUG."""
        route = self._logger
        if route.level <= DEBUG:
            route.emit(route.name, "debug", self._context, event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at INFO."""
        route = self._logger
        if route.level <= INFO:
            route.emit(route.name, "info", self._context, event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at WARNING."""
        route = self._logger
        if route.level <= WARNING:
            route.emit(route.name, "warning", self._context, event, args, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR."""
        route = self._logger
        if route.level <= ERROR:
            route.emit(route.name, "error", self._context, event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at CRITICAL."""
        route = self._logger
        if route.level <= CRITICAL:
            route.emit(route.name, "critical", self._context, event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled (or ``exc_info=...``)."""
        route = self._logger
        if route.level <= ERROR:
            kw.setdefault("exc_info", True)
            route.emit(route.name, "error", self._context, event, args, kw)

    def log(self, level: int | str, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ``level`` (a number or a name such as ``"warning"``)."""
        number = level_number(level)
        route = self._logger
        if route.level <= number:
            name = _LEVEL_NAMES.get(number) or logging.getLevelName(number).lower()
            route.emit(route.name, name, self._context, event, args, kw)

    def is_enabled_for(self, level: int | str) -> bool:
        """Return whether a call at ``level`` would be logged."""
        return self._logger.level <= level_number(level)

    @property
    def name(self) -> str:
        """The logger's name."""
        return self._logger.name

    warn = warning
    fatal = critical
    msg = info


def get_logger(name: str | None = None, **initial_values: Any) -> BoundLogger:
    """Return a logger named ``name`` (default: the calling module's ``__name__``).

    ``initial_values`` are bound to it. Loggers are cheap to make and follow reconfiguration, so a
    module-level ``log = get_logger(__name__)`` is the usual form.
    """
    if name is None:
        name = caller_module(1)
    return BoundLogger(route_for(name), _NO_PROCESSORS, initial_values)


def structlog_factory(*args: Any) -> Route:
    """``logger_factory`` for ``structlog.configure``: ``structlog.get_logger(name)`` gets our route."""
    if args and isinstance(args[0], str):
        return route_for(args[0])
    return route_for(caller_module(1))
