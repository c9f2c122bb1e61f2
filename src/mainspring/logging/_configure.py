"""``configure_logging`` / ``shutdown_logging``: build a configuration, install it, tear it down."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from mainspring.config._sections import LoggingSettings
from mainspring.errors import ConfigError, ConfigProblem
from mainspring.logging._logger import (
    BoundLogger,
    State,
    install_state,
    level_number,
    reset_locks_after_fork,
    structlog_factory,
)
from mainspring.logging._pipeline import ExceptionView, Pipeline, build_pipeline
from mainspring.logging._redact import Redactor, plain_fallback
from mainspring.logging._render import (
    Render,
    exception_to_dict,
    exception_to_text,
    make_console_render,
    make_json_render,
)
from mainspring.logging._sinks import FileSink, Sink, StreamSink
from mainspring.logging._stdlib import RootSnapshot, StdlibBridge, take_over_root
from mainspring.logging._writer import BackgroundWriter

#: How long shutdown waits for the background writer to write what is queued.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class LoggingStats:
    """Counters of one logging configuration."""

    #: Records written by the background writer (``None`` in blocking mode, where nothing is queued).
    written: int | None
    #: Records lost: queue full, or the sink failed to write them. Each loss is also reported in the log.
    dropped: int
    #: Records waiting in the queue right now.
    queued: int


class LoggingHandle:
    """What :func:`configure_logging` returns: flush, inspect or close that configuration."""

    def __init__(self, settings: LoggingSettings, sink: Sink, writer: BackgroundWriter | None) -> None:
        self.settings = settings
        self._sink = sink
        self._writer = writer
        self._released = False
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether this is the installed configuration."""
        return _active is not None and _active.handle is self

    @property
    def stats(self) -> LoggingStats:
        """The writer's counters."""
        if self._writer is None:
            return LoggingStats(written=None, dropped=0, queued=0)
        stats = self._writer.stats()
        return LoggingStats(
            written=stats.written,
            dropped=stats.dropped_queue_full + stats.dropped_write_failed,
            queued=stats.queued,
        )

    def flush(self, timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Write everything logged so far to the sink; ``False`` if the writer did not finish in time."""
        if self._released:
            return True
        if self._writer is not None:
            return self._writer.flush(timeout)
        self._sink.flush()
        return True

    def close(self, timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Flush and close; if this configuration is installed, logging goes back to the defaults."""
        if self.active:
            return shutdown_logging(timeout)
        return self._release(timeout)

    def __enter__(self) -> LoggingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release(self, timeout: float | None) -> bool:
        with self._lock:
            if self._released:
                return True
            self._released = True
            done = True
            if self._writer is not None:
                done = self._writer.stop(timeout)
            if done:
                try:
                    self._sink.close()
                except OSError as exc:
                    # Shutdown must finish; the failure is said where it can still be seen.
                    print(f"mainspring.logging: closing the log sink failed: {exc}", file=sys.__stderr__)
                    done = False
            return done

    def _after_fork(self) -> None:
        self._sink.after_fork()
        if self._writer is not None:
            self._writer.reset_after_fork()


@dataclass(slots=True)
class _Active:
    handle: LoggingHandle
    bridge: StdlibBridge
    snapshot: RootSnapshot
    structlog_config: dict[str, Any] | None


class HasLoggingSettings(Protocol):
    """A settings object with a ``logging`` section, such as the service ``Settings``."""

    @property
    def logging(self) -> LoggingSettings:
        """The logging section."""
        ...


_config_lock = threading.RLock()
_active: _Active | None = None
_hooks_installed = False


def _resolve(settings: object) -> LoggingSettings:
    if isinstance(settings, LoggingSettings):
        return settings
    section = getattr(settings, "logging", None)
    if isinstance(section, LoggingSettings):
        return section
    raise ConfigError(
        "configure_logging() needs a LoggingSettings or a settings object with a `logging` section "
        f"(mainspring.config.LoggingSettings); got {type(settings).__name__}"
    )


def make_redactor(settings: LoggingSettings) -> Redactor | None:
    """Return the redactor ``settings`` ask for, or ``None`` when redaction is off."""
    if not settings.redact:
        return None
    return Redactor(settings.redact_keys, patterns=settings.redact_patterns)


def exception_view(redactor: Redactor | None, *, as_text: bool) -> ExceptionView:
    """Return the function that turns an exception into a record field."""
    scrub = redactor.text if redactor is not None else str

    def as_dict(exc: BaseException) -> Any:
        return exception_to_dict(exc, scrub)

    def as_string(exc: BaseException) -> Any:
        return exception_to_text(exc, scrub)

    return as_string if as_text else as_dict


def _make_render(settings: LoggingSettings, redactor: Redactor | None) -> Render:
    if settings.format == "console":
        stream = sys.stdout if settings.sink == "stdout" else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return make_console_render(colors=settings.sink != "file" and callable(isatty) and bool(isatty()))
    fallback = redactor.fallback if redactor is not None else plain_fallback
    return make_json_render(fallback, dataclasses_via_fallback=redactor is not None)


def _make_sink(settings: LoggingSettings) -> Sink:
    if settings.sink == "file":
        if settings.file is None:
            raise ConfigError(
                "logging.sink is 'file' but no file is configured",
                problems=[
                    ConfigProblem("logging.file", "required when logging.sink is 'file' (set file.path)")
                ],
            )
        sink = FileSink(settings.file)
        sink.open()
        return sink
    return StreamSink(settings.sink)


def _build(settings: LoggingSettings) -> tuple[State, LoggingHandle]:
    redactor = make_redactor(settings)
    render = _make_render(settings, redactor)
    exception = exception_view(redactor, as_text=settings.format == "console")
    sink = _make_sink(settings)
    writer: BackgroundWriter | None = None
    pipeline_ref: list[Pipeline] = []
    if settings.non_blocking:
        writer = BackgroundWriter(
            sink, queue_size=settings.queue_size, report=lambda n, why: pipeline_ref[0].report_drops(n, why)
        )
        write = writer.write
    else:
        write = sink.write
    pipeline = build_pipeline(redactor=redactor, render=render, write=write, exception=exception)
    pipeline_ref.append(pipeline)
    state = State(
        pipeline=pipeline,
        settings=settings,
        root_level=level_number(settings.level),
        levels={name: level_number(level) for name, level in settings.levels.items()},
        redactor=redactor,
    )
    if writer is not None:
        writer.start()
    return state, LoggingHandle(settings, sink, writer)


def default_state() -> State:
    """The configuration in force before ``configure_logging``: JSON lines on stdout at INFO, redacted."""
    settings = LoggingSettings()
    redactor = make_redactor(settings)
    sink = StreamSink("stdout")
    pipeline = build_pipeline(
        redactor=redactor,
        render=_make_render(settings, redactor),
        write=sink.write,
        exception=exception_view(redactor, as_text=False),
    )
    return State(
        pipeline=pipeline, settings=settings, root_level=level_number(settings.level), redactor=redactor
    )


def _structlog_config() -> dict[str, Any]:
    return {
        "processors": [],
        "wrapper_class": BoundLogger,
        "context_class": dict,
        "logger_factory": structlog_factory,
        "cache_logger_on_first_use": True,
    }


def ensure_structlog_routed() -> dict[str, Any] | None:
    """Point ``structlog.get_logger`` at our routes; return the config to restore (``None``: defaults)."""
    previous = structlog.get_config() if structlog.is_configured() else None
    structlog.configure(**_structlog_config())
    return previous


def restore_structlog(previous: dict[str, Any] | None) -> None:
    """Undo :func:`ensure_structlog_routed`."""
    structlog.reset_defaults()
    if previous is not None:
        structlog.configure(**previous)


def configure_logging(settings: LoggingSettings | HasLoggingSettings) -> LoggingHandle:
    """Configure logging from ``settings`` (a :class:`LoggingSettings` or settings with a ``.logging``).

    Installs the format, sink, levels and redaction for mainspring loggers, structlog loggers and every
    standard-library logger (one handler on the root logger). Calling it again replaces the previous
    configuration and closes its sink and writer thread. Returns a :class:`LoggingHandle`; call
    :func:`shutdown_logging` (also run at exit) to flush and stop.

    Raises :class:`~mainspring.errors.ConfigError` when the settings are unusable (no file for
    ``sink="file"``, a log file that cannot be opened).
    """
    global _active
    resolved = _resolve(settings)
    with _config_lock:
        state, handle = _build(resolved)
        previous = _active
        if previous is None:
            snapshot = RootSnapshot()
            bridge = StdlibBridge()
            structlog_previous = ensure_structlog_routed()
        else:
            snapshot, bridge = previous.snapshot, previous.bridge
            structlog_previous = previous.structlog_config
            structlog.configure(**_structlog_config())
        install_state(state)
        take_over_root(bridge)
        snapshot.apply_levels(state.root_level, state.levels)
        _active = _Active(handle, bridge, snapshot, structlog_previous)
        _install_hooks()
        if previous is not None:
            previous.handle._release(DEFAULT_SHUTDOWN_TIMEOUT)
    return handle


def shutdown_logging(timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
    """Flush and stop the configured logging and put the defaults back; ``False`` if the flush timed out.

    Restores the root logger's previous handlers and levels and structlog's previous configuration.
    Safe to call more than once; registered with :mod:`atexit` by :func:`configure_logging`.
    """
    global _active
    with _config_lock:
        active = _active
        if active is None:
            return True
        _active = None
        install_state(default_state())
        active.snapshot.restore(active.bridge)
        restore_structlog(active.structlog_config)
        return active.handle._release(timeout)


def active_bridge() -> StdlibBridge | None:
    """Return the stdlib bridge of the installed configuration, if any."""
    active = _active
    return active.bridge if active is not None else None


def _at_exit() -> None:
    shutdown_logging()


def _after_fork_in_child() -> None:
    # A parent thread may have held these at the fork; in the child nobody would ever release them.
    global _config_lock
    _config_lock = threading.RLock()
    reset_locks_after_fork()
    active = _active
    if active is not None:
        active.handle._after_fork()


def _install_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
