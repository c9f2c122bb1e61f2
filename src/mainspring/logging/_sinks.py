"""Sinks: where rendered lines go. A standard stream, or a file rotated by size or by time.

A sink takes whole lines as bytes. ``write`` is the blocking path (one line, flushed at once so that
a crash loses nothing); ``write_batch`` is what the background writer calls with many lines at a time.
"""

from __future__ import annotations

import calendar
import io
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal, Protocol

from mainspring.config._sections import LogFileSettings
from mainspring.errors import ConfigError, ConfigProblem

_SECONDS = {"S": 1, "M": 60, "H": 3600, "D": 86400}
_SUFFIX_FORMATS = {
    "S": "%Y-%m-%d_%H-%M-%S",
    "M": "%Y-%m-%d_%H-%M",
    "H": "%Y-%m-%d_%H",
}
_DAY_SUFFIX = "%Y-%m-%d"


class Sink(Protocol):
    """Where rendered lines go."""

    def write(self, line: bytes) -> None:
        """Write one line and flush it."""

    def write_batch(self, lines: Sequence[bytes]) -> None:
        """Write several lines, then flush once."""

    def flush(self) -> None:
        """Flush buffered bytes to the operating system."""

    def close(self) -> None:
        """Flush and release the sink; later writes are dropped."""

    def after_fork(self) -> None:
        """In a forked child: replace locks that a parent thread may have held at the fork."""


class StreamSink:
    """Writes to ``sys.stdout`` or ``sys.stderr``, looked up at each write.

    Looking the stream up late means a replaced ``sys.stdout`` (pytest's capture, a redirect) is
    honoured, and that closing the sink never closes the process's standard streams.
    """

    def __init__(self, which: Literal["stdout", "stderr"]) -> None:
        self._which = which
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        """Write one line and flush it."""
        self._put(line)

    def write_batch(self, lines: Sequence[bytes]) -> None:
        """Write several lines, then flush once."""
        self._put(b"".join(lines))

    def _put(self, data: bytes) -> None:
        stream: IO[str] | None = sys.stdout if self._which == "stdout" else sys.stderr
        if stream is None:
            return
        with self._lock:
            buffer: IO[bytes] | None = getattr(stream, "buffer", None)
            if buffer is not None:
                # Text still pending in the wrapper (a print()) goes first, so lines keep their order.
                stream.flush()
                buffer.write(data)
                buffer.flush()
            elif isinstance(stream, io.RawIOBase | io.BufferedIOBase):
                stream.write(data)
                stream.flush()
            else:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()

    def flush(self) -> None:
        """Flush the stream."""
        stream = sys.stdout if self._which == "stdout" else sys.stderr
        if stream is not None:
            stream.flush()

    def close(self) -> None:
        """Flush; the process's standard streams stay open."""
        self.flush()

    def after_fork(self) -> None:
        """In a forked child: replace the lock that a parent thread may have held at the fork."""
        self._lock = threading.Lock()


def _write_all(file: IO[bytes], data: bytes) -> None:
    written = file.write(data)
    if written is not None and written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += file.write(view[written:]) or 0


class FileSink:
    """Appends to a file, rotating by size (``max_bytes``) or by time (``when``), keeping ``backups``.

    Size rotation renames ``app.log`` to ``app.log.1`` (``.1`` is the newest) and shifts older ones up;
    time rotation renames it to ``app.log.<period start>`` (UTC) and deletes all but the newest
    ``backups``. ``backups=0`` keeps no rotated file: the log starts afresh.
    """

    def __init__(self, settings: LogFileSettings) -> None:
        self.path = Path(settings.path)
        self._rotation = settings.rotation
        self._max_bytes = settings.max_bytes
        self._when = settings.when
        self._backups = settings.backups
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0
        self._next_rollover = float("inf")

    def open(self) -> None:
        """Open the file for appending (creating its directory); raise :class:`ConfigError` if impossible."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._open("ab")
        except OSError as exc:
            raise ConfigError(
                "cannot open the log file; fix logging.file.path or the directory's permissions",
                problems=[
                    ConfigProblem(
                        "logging.file.path",
                        f"cannot be opened for appending ({exc.strerror})",
                        str(self.path),
                    )
                ],
            ) from exc
        try:
            self._size = self._file.tell()
        except OSError:  # a pipe or a character device has no size; it never rotates by size anyway
            self._size = 0
        if self._rotation == "time":
            self._next_rollover = self._compute_rollover(time.time())

    def write(self, line: bytes) -> None:
        """Write one line and flush it, rotating first if the line would not fit."""
        with self._lock:
            file = self._file
            if file is None:
                return
            if self._rotation == "size":
                if self._size and self._size + len(line) > self._max_bytes:
                    file = self._rotate_by_size()
            elif self._rotation == "time" and time.time() >= self._next_rollover:
                file = self._rotate_by_time()
            _write_all(file, line)
            self._size += len(line)

    def write_batch(self, lines: Sequence[bytes]) -> None:
        """Write several lines and flush once; rotation still happens between lines."""
        with self._lock:
            if self._file is None:
                return
            if self._rotation == "time" and time.time() >= self._next_rollover:
                self._rotate_by_time()
            data = b"".join(lines)
            if self._rotation != "size" or self._size + len(data) <= self._max_bytes:
                self._put(data)
                return
            chunk: list[bytes] = []
            chunk_size = 0
            for line in lines:
                if (self._size + chunk_size + len(line) > self._max_bytes) and (self._size + chunk_size):
                    self._put(b"".join(chunk))
                    chunk, chunk_size = [], 0
                    self._rotate_by_size()
                chunk.append(line)
                chunk_size += len(line)
            self._put(b"".join(chunk))

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        _write_all(self._file, data)
        self._size += len(data)

    def flush(self) -> None:
        """Nothing to do: the file is unbuffered, every write goes straight to the operating system."""

    def close(self) -> None:
        """Flush and close the file; later writes are dropped."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def after_fork(self) -> None:
        """In a forked child: replace the lock that a parent thread may have held at the fork."""
        self._lock = threading.Lock()

    def _open(self, mode: str) -> IO[bytes]:
        # Unbuffered: a line is one write() system call, and a failed write leaves nothing behind in a
        # buffer to fail again at every later flush and at close.
        return open(self.path, mode, buffering=0)

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _rotate_by_size(self) -> IO[bytes]:
        assert self._file is not None
        self._file.close()
        if self._backups > 0:
            oldest = self._rotated(self._backups)
            if oldest.exists():
                oldest.unlink()
            for index in range(self._backups - 1, 0, -1):
                source = self._rotated(index)
                if source.exists():
                    os.replace(source, self._rotated(index + 1))
            os.replace(self.path, self._rotated(1))
            self._file = self._open("ab")
        else:
            self._file = self._open("wb")
        self._size = 0
        return self._file

    def _rotate_by_time(self) -> IO[bytes]:
        assert self._file is not None
        self._file.close()
        period_start = self._period_start(self._next_rollover)
        suffix_format = _SUFFIX_FORMATS.get(self._when, _DAY_SUFFIX)
        target = self.path.with_name(
            f"{self.path.name}.{time.strftime(suffix_format, time.gmtime(period_start))}"
        )
        if self.path.exists() and self.path.stat().st_size > 0:
            os.replace(self.path, target)
        self._delete_expired()
        self._file = self._open("ab")
        self._size = 0
        self._next_rollover = self._compute_rollover(time.time())
        return self._file

    def _period_start(self, rollover: float) -> float:
        # The file being closed holds records from the period that ends at the rollover instant.
        if self._when in _SECONDS:
            return rollover - _SECONDS[self._when]
        if self._when == "midnight":
            return rollover - 86400
        return rollover - 7 * 86400

    def _delete_expired(self) -> None:
        prefix = self.path.name + "."
        rotated = sorted(
            p
            for p in self.path.parent.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix) :][:1].isdigit()
        )
        excess = len(rotated) - self._backups
        for old in rotated[: max(excess, 0)]:
            old.unlink(missing_ok=True)

    def _compute_rollover(self, now: float) -> float:
        """Return the next rollover instant (UTC) after ``now``, aligned to the unit's boundary."""
        if self._when in _SECONDS:
            step = _SECONDS[self._when]
            return (int(now) // step + 1) * step
        day_start = calendar.timegm((*time.gmtime(now)[:3], 0, 0, 0))
        if self._when == "midnight":
            return float(day_start + 86400)
        weekday = int(self._when[1])
        days_ahead = (weekday - time.gmtime(now).tm_wday) % 7 or 7
        return float(day_start + days_ahead * 86400)
