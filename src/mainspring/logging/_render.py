"""Rendering: timestamps, exceptions as data or text, and event dicts as JSON or console lines."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeAlias

import orjson
import structlog

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Render: TypeAlias = Callable[[dict[str, Any]], bytes]
TextScrub: TypeAlias = Callable[[str], str]

#: Frames kept per exception (the innermost ones) and links followed along ``__cause__``/``__context__``.
MAX_FRAMES = 50
MAX_CHAIN = 5
MAX_GROUP = 10

# (millisecond, rendered) of the last timestamp: at 100k records/s about a hundred records share one.
_last_ms: tuple[int, str] = (-1, "")
_last_second: tuple[int, str] = (-1, "")


def format_timestamp(epoch: float) -> str:
    """Return ``epoch`` as ISO-8601 UTC with milliseconds and ``Z`` (``2026-11-28T10:00:00.123Z``)."""
    global _last_ms, _last_second
    ms = int(epoch * 1000)
    cached = _last_ms
    if cached[0] == ms:
        return cached[1]
    second, milli = divmod(ms, 1000)
    prefix = _last_second
    if prefix[0] != second:
        prefix = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _last_second = prefix
    text = f"{prefix[1]}.{milli:03d}Z"
    _last_ms = (ms, text)
    return text


def now_timestamp() -> str:
    """Return the current time as :func:`format_timestamp` renders it."""
    epoch = time.time()
    cached = _last_ms
    if cached[0] == int(epoch * 1000):
        return cached[1]
    return format_timestamp(epoch)


def resolve_exc_info(value: object) -> ExcInfo | None:
    """Normalise an ``exc_info`` argument (``True``, an exception or a tuple) to a triple, or ``None``."""
    if value is None or value is False:
        return None
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[0], value[1], value[2]
    current = sys.exc_info()
    if current[1] is None:
        return None
    return current


def _type_name(kind: type[BaseException]) -> str:
    module = kind.__module__
    if module in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _message(exc: BaseException, scrub: TextScrub) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises still gets logged
        text = f"<unprintable {type(exc).__name__}>"
    return scrub(text)


def exception_to_dict(exc: BaseException, scrub: TextScrub, depth: int = 0) -> dict[str, Any]:
    """Describe ``exc`` as data: type, message, frames (file, line, function), notes, cause/context.

    Only code locations are recorded: no local variables, no source lines (a literal on the failing line
    could be a secret). Messages and notes pass through ``scrub``.
    """
    data: dict[str, Any] = {"type": _type_name(type(exc)), "message": _message(exc, scrub)}
    frames = list(traceback.extract_tb(exc.__traceback__))
    if len(frames) > MAX_FRAMES:
        data["frames_omitted"] = len(frames) - MAX_FRAMES
        frames = frames[-MAX_FRAMES:]
    data["frames"] = [{"file": f.filename, "line": f.lineno, "function": f.name} for f in frames]
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list) and notes:
        data["notes"] = [scrub(str(note)) for note in notes]
    if isinstance(exc, BaseExceptionGroup) and depth < MAX_CHAIN:
        data["exceptions"] = [exception_to_dict(e, scrub, depth + 1) for e in exc.exceptions[:MAX_GROUP]]
    if depth < MAX_CHAIN:
        if exc.__cause__ is not None:
            data["cause"] = exception_to_dict(exc.__cause__, scrub, depth + 1)
        elif exc.__context__ is not None and not exc.__suppress_context__:
            data["context"] = exception_to_dict(exc.__context__, scrub, depth + 1)
    return data


def exception_to_text(exc: BaseException, scrub: TextScrub) -> str:
    """Format ``exc`` as a plain traceback (no locals), scrubbed with ``scrub``."""
    text = "".join(traceback.format_exception(exc, limit=-MAX_FRAMES))
    return scrub(text.rstrip("\n"))


def make_json_render(fallback: Callable[[Any], Any], *, dataclasses_via_fallback: bool) -> Render:
    """Build the JSON renderer: one object per line, orjson, never raising."""
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    if dataclasses_via_fallback:
        # Dataclasses go through the fallback so that their fields are redacted like a dict's.
        option |= orjson.OPT_PASSTHROUGH_DATACLASS
    dumps = orjson.dumps
    encode_error = orjson.JSONEncodeError

    def render(record: dict[str, Any]) -> bytes:
        try:
            return dumps(record, default=fallback, option=option)
        except encode_error as exc:
            return _unencodable(record, exc, fallback)

    return render


def _unencodable(record: dict[str, Any], exc: Exception, fallback: Callable[[Any], Any]) -> bytes:
    # A value orjson refuses (an int above 64 bits, a cycle): keep the line, the other values typed,
    # that value as its repr (through the fallback, so the text patterns still apply).
    safe: dict[str, Any] = {}
    for key, value in record.items():
        try:
            orjson.dumps(value, default=fallback, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            value = fallback(repr(value))
        safe[str(key)] = value
    safe["logging_error"] = f"record could not be encoded as JSON: {exc}"
    try:
        return orjson.dumps(
            safe, default=fallback, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        )
    except orjson.JSONEncodeError:
        return orjson.dumps(
            {"event": "unencodable log record", "logging_error": str(exc)}, option=orjson.OPT_APPEND_NEWLINE
        )


def make_console_render(*, colors: bool) -> Render:
    """Build the console renderer (structlog's ``ConsoleRenderer``, plain tracebacks, no locals)."""
    renderer = structlog.dev.ConsoleRenderer(
        colors=colors, exception_formatter=structlog.dev.plain_traceback, pad_event_to=30
    )

    def render(record: dict[str, Any]) -> bytes:
        return (renderer(None, str(record.get("level", "")), record) + "\n").encode("utf-8", "replace")

    return render
