"""The fused processor chain: one call turns a log call or a stdlib record into a rendered line.

structlog's generic chain (merge contextvars, add level, timestamper, renderer) costs a function call
and a dict pass per step. Here the steps are inlined into one closure built once per configuration:
timestamp (cached per millisecond), level, logger name, event, the context ids from
:mod:`mainspring.context`, bound and call fields, redaction, exception data, render, hand-off.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from mainspring.context import get_context
from mainspring.logging._redact import Redactor
from mainspring.logging._render import Render, format_timestamp, now_timestamp, resolve_exc_info

#: ``emit(logger_name, level_name, bound_context, event, positional_args, call_fields)``.
Emit: TypeAlias = Callable[[str, str, dict[str, Any], Any, tuple[Any, ...], dict[str, Any]], None]
EmitRecord: TypeAlias = Callable[[logging.LogRecord], None]
Write: TypeAlias = Callable[[Any], None]
ExceptionView: TypeAlias = Callable[[BaseException], Any]

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRS = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"]
)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The two entry points of one configuration: structlog-style calls and stdlib records."""

    emit: Emit
    emit_record: EmitRecord
    #: Renders the warning line the background writer adds when it dropped records.
    report_drops: Callable[[int, str], bytes]


def _interpolate(event: Any, args: tuple[Any, ...]) -> Any:
    try:
        return event % args
    except (TypeError, ValueError, KeyError):
        return f"{event} {args!r}"


def _internal_error(exc: Exception) -> None:
    # Logging must not raise into the caller, and must not fail silently either.
    print(f"mainspring.logging: could not log a record: {type(exc).__name__}: {exc}", file=sys.__stderr__)


def build_pipeline(
    *,
    redactor: Redactor | None,
    render: Render | Callable[[dict[str, Any]], Any],
    write: Write,
    exception: ExceptionView,
) -> Pipeline:
    """Build the fused chain that renders with ``render`` and hands the result to ``write``."""
    now = now_timestamp
    context = get_context
    redact_fields = redactor.fields if redactor is not None else None
    redact_event = redactor.event if redactor is not None else None
    redact_text = redactor.text if redactor is not None else None

    def emit(
        name: str, level: str, bound: dict[str, Any], event: Any, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        try:
            if args:
                event = _interpolate(event, args)
                if redact_text is not None and type(event) is str:
                    event = redact_text(event)
            elif redact_event is not None and type(event) is str:
                event = redact_event(event)
            timestamp = now()
            record = {"timestamp": timestamp, "level": level, "logger": name, "event": event}
            ids = context().log_fields
            if ids:
                record.update(ids)
            skip = len(record)
            exc_info = None
            if bound:
                record.update(bound)
            if kw:
                if "exc_info" in kw:
                    exc_info = kw.pop("exc_info")
                record.update(kw)
            if len(record) != skip:
                if len(record) != skip + len(bound) + len(kw):
                    # A field named like one of ours: ours win, keeping their place.
                    record.update(timestamp=timestamp, level=level, logger=name, event=event)
                if redact_fields is not None:
                    redact_fields(record, skip)
            if exc_info is not None:
                info = resolve_exc_info(exc_info)
                if info is not None:
                    record["exception"] = exception(info[1])
            write(render(record))
        except Exception as exc:  # noqa: BLE001 - see _internal_error
            _internal_error(exc)

    def emit_record(rec: logging.LogRecord) -> None:
        try:
            try:
                message: Any = rec.getMessage()
            except (TypeError, ValueError, KeyError):
                message = f"{rec.msg} {rec.args!r}"
            if redactor is not None and type(message) is str:
                message = redactor.text(message) if rec.args else redactor.event(message)
            timestamp = format_timestamp(rec.created)
            level = rec.levelname.lower()
            record: dict[str, Any] = {
                "timestamp": timestamp,
                "level": level,
                "logger": rec.name,
                "event": message,
            }
            ids = context().log_fields
            if ids:
                record.update(ids)
            skip = len(record)
            attributes = rec.__dict__
            # The set difference runs in C; most records have no extras and stop here.
            if attributes.keys() - _RECORD_ATTRS:
                for key, value in attributes.items():
                    if key not in _RECORD_ATTRS:
                        record[key] = value
            if len(record) != skip:
                record.update(timestamp=timestamp, level=level, logger=rec.name, event=message)
                if redactor is not None:
                    redactor.fields(record, skip)
            if rec.stack_info:
                record["stack"] = redactor.text(rec.stack_info) if redactor is not None else rec.stack_info
            if rec.exc_info and rec.exc_info[1] is not None:
                record["exception"] = exception(rec.exc_info[1])
            elif rec.exc_text:
                record["exception"] = redactor.text(rec.exc_text) if redactor is not None else rec.exc_text
            write(render(record))
        except Exception as exc:  # noqa: BLE001 - see _internal_error
            _internal_error(exc)

    def report_drops(count: int, reason: str) -> bytes:
        line = render(
            {
                "timestamp": now(),
                "level": "warning",
                "logger": "mainspring.logging",
                "event": "log records dropped",
                "dropped": count,
                "reason": reason,
            }
        )
        return line if isinstance(line, bytes) else b""

    return Pipeline(emit=emit, emit_record=emit_record, report_drops=report_drops)
