"""The non-blocking writer: callers hand over rendered lines, one thread writes them in batches.

The caller's cost is a ``deque.append`` (atomic under the GIL, no lock) and, only when the writer
thread is asleep, an ``Event.set``. Before each write the writer lingers for :data:`LINGER` seconds (cut
short by ``flush``, ``stop`` or a queue filling up) so that lines arriving close together go out as one
batch, at most one write per ``LINGER`` under steady load: a writer cycling through small batches would
take the GIL from the caller's thread each time. It then drains
whatever has piled up and writes it with one ``write`` and one ``flush``, so a slow disk slows the
writer, never the caller.

When the queue is full the new line is dropped and counted; the writer later writes a warning line
saying how many were dropped. A batch the sink fails to write is counted and reported the same way.
Blocking the caller instead would stall an event loop behind a slow disk, which is what this mode is
for avoiding.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mainspring.logging._sinks import Sink

#: Lines written per ``write`` call at most; bounds the writer's hold on the GIL and its memory.
MAX_BATCH = 2048
#: Seconds the writer waits after a wake-up to let a batch gather (lines are at most this late on disk).
LINGER = 0.02
# The writer also wakes up this often on its own, so a lost wake-up can delay lines, never strand them.
_IDLE_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the background writer since it started."""

    written: int
    dropped_queue_full: int
    dropped_write_failed: int
    queued: int


class BackgroundWriter:
    """A bounded queue of rendered lines and the daemon thread that writes them to a sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        queue_size: int,
        report: Callable[[int, str], bytes],
        name: str = "mainspring-log-writer",
    ) -> None:
        self.sink = sink
        self._max = queue_size
        # A queue this long ends the writer's linger early, well before lines would be dropped.
        self._soon = max(1, min(queue_size // 4, MAX_BATCH))
        self._report = report
        self._name = name
        self._queue: deque[bytes | threading.Event] = deque()
        self._wake = threading.Event()
        self._drop_lock = threading.Lock()
        self._idle = False
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._written = 0
        self._dropped_full = 0
        self._dropped_failed = 0
        self._markers_pending = 0
        self._reported_full = 0
        self._reported_failed = 0
        self._last_error: str | None = None

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def write(self, line: bytes) -> None:
        """Queue one rendered line; drop and count it when the queue is full. Never blocks."""
        queue = self._queue
        if len(queue) >= self._max:
            with self._drop_lock:
                self._dropped_full += 1
            return
        queue.append(line)
        if self._idle or len(queue) >= self._soon:
            if self._closed:
                self._write_late()
            else:
                # Cleared here, not only by the writer: until the writer gets the GIL, every later
                # caller would otherwise pay for another set().
                self._idle = False
                self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every line queued before this call is written; ``False`` on timeout."""
        if not self.running:
            self._write_late()
            return not self._queue
        done = threading.Event()
        # Counted before it is queued: the writer looks for markers only while the count is non-zero.
        with self._drop_lock:
            self._markers_pending += 1
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Write what is queued, stop the thread and flush the sink; ``False`` if the thread hung."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        stopped = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            stopped = not thread.is_alive()
        if stopped:
            self._closed = True
            self._idle = True
            self._write_late()
        return stopped

    def stats(self) -> WriterStats:
        """Return the counters."""
        return WriterStats(
            written=self._written,
            dropped_queue_full=self._dropped_full,
            dropped_write_failed=self._dropped_failed,
            queued=len(self._queue),
        )

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's queue and thread, and start a thread of our own."""
        self._queue.clear()
        self._markers_pending = 0
        self._wake = threading.Event()
        self._drop_lock = threading.Lock()
        if not self._stopping:
            self._idle = False
            self.start()

    def _run(self) -> None:
        queue = self._queue
        popleft = queue.popleft
        while True:
            pending = len(queue)
            if not pending:
                if self._stopping:
                    break
                self._idle = True
                if not queue and not self._stopping:
                    self._wake.wait(_IDLE_WAIT)
                self._wake.clear()
                self._idle = False
                continue
            if pending < self._soon and not self._stopping and not self._markers_pending:
                # Let the lines arriving in the next moments join this batch, also between batches
                # under steady load (one write per LINGER, not one per few lines); flush, stop and a
                # filling queue set the event and end the wait early.
                self._wake.wait(LINGER)
                self._wake.clear()
                pending = len(queue)
            batch = [popleft() for _ in range(min(pending, MAX_BATCH))]
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a dead writer would strand every later record
                self._failed(len(batch), exc)
        self._idle = True

    def _write(self, batch: list[bytes | threading.Event]) -> None:
        markers: list[threading.Event] = []
        lines: list[bytes]
        if self._markers_pending:
            markers = [item for item in batch if isinstance(item, threading.Event)]
            lines = [item for item in batch if isinstance(item, bytes)]
            with self._drop_lock:
                self._markers_pending -= len(markers)
        else:
            lines = batch  # type: ignore[assignment]  # no marker was queued, so all are bytes
        count = len(lines)
        if self._dropped_full != self._reported_full or self._dropped_failed != self._reported_failed:
            lines = [*self._drop_reports(), *lines]
        if lines:
            try:
                self.sink.write_batch(lines)
            except Exception as exc:  # noqa: BLE001 - the writer must survive a failing sink; counted below
                self._failed(count, exc)
            else:
                self._written += count
        for marker in markers:
            marker.set()

    def _drop_reports(self) -> list[bytes]:
        reports = []
        full, failed = self._dropped_full, self._dropped_failed
        if full != self._reported_full:
            reports.append(self._report(full - self._reported_full, "queue full"))
            self._reported_full = full
        if failed != self._reported_failed:
            reason = f"write failed: {self._last_error}" if self._last_error else "write failed"
            reports.append(self._report(failed - self._reported_failed, reason))
            self._reported_failed = failed
        return reports

    def _failed(self, count: int, exc: Exception) -> None:
        first = self._last_error is None
        self._last_error = f"{type(exc).__name__}: {exc}"
        with self._drop_lock:
            self._dropped_failed += count
        if first:
            # The sink itself is failing; stderr is the one place left to say so.
            print(f"mainspring.logging: cannot write log records ({self._last_error})", file=sys.__stderr__)

    def _write_late(self) -> None:
        # After stop (or without a thread) lines are written by whoever queued them.
        with self._drop_lock:
            batch: list[bytes | threading.Event] = []
            while self._queue:
                batch.append(self._queue.popleft())
        if batch or self._dropped_full != self._reported_full:
            self._write(batch)
        try:
            self.sink.flush()
        except (OSError, ValueError) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
