"""Non-blocking mode: nothing lost on shutdown or under concurrency, drops counted and reported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mainspring.config import LogFileSettings, LoggingSettings
from mainspring.context import bind_context
from mainspring.logging import configure_logging, get_logger, shutdown_logging

Read = Callable[[Path], list[dict[str, Any]]]
Settings = Callable[..., LoggingSettings]


def test_shutdown_flushes_every_queued_record(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    configure_logging(file_settings(non_blocking=True, queue_size=50_000))
    log = get_logger("svc")
    for i in range(20_000):
        log.info("queued", n=i)
    assert shutdown_logging()

    records = read_json(log_path)
    assert [r["n"] for r in records] == list(range(20_000))


def test_flush_returns_once_everything_so_far_is_written(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    handle = configure_logging(file_settings(non_blocking=True))
    for i in range(500):
        get_logger("svc").info("x", n=i)
    assert handle.flush(timeout=10)

    assert len(read_json(log_path)) == 500
    assert handle.stats.written == 500
    assert handle.stats.dropped == 0


async def test_threads_and_tasks_logging_at_once_lose_nothing(
    file_settings: Settings, log_path: Path, read_json: Read
) -> None:
    configure_logging(file_settings(non_blocking=True, queue_size=200_000))
    log = get_logger("load")
    threads_n, per_thread, tasks_n, per_task = 8, 2_000, 50, 200

    def thread_worker(index: int) -> None:
        with bind_context(correlation_id=f"thread-{index}"):
            for i in range(per_thread):
                log.info("from thread", worker=index, n=i)

    async def task_worker(index: int) -> None:
        with bind_context(correlation_id=f"task-{index}"):
            for i in range(per_task):
                log.info("from task", worker=index, n=i)
                if i % 10 == 0:
                    await asyncio.sleep(0)

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    await asyncio.gather(*(task_worker(i) for i in range(tasks_n)))
    for thread in threads:
        thread.join()
    assert shutdown_logging(timeout=30)

    records = read_json(log_path)
    assert len(records) == threads_n * per_thread + tasks_n * per_task
    per_producer = Counter(r["correlation_id"] for r in records)
    assert all(per_producer[f"thread-{i}"] == per_thread for i in range(threads_n))
    assert all(per_producer[f"task-{i}"] == per_task for i in range(tasks_n))
    # Each producer's records keep their order, and carry their own producer's context.
    for producer in ("thread-3", "task-7"):
        numbers = [r["n"] for r in records if r["correlation_id"] == producer]
        assert numbers == sorted(numbers)
    assert all(r["correlation_id"] == f"{r['event'].split()[1]}-{r['worker']}" for r in records)


def test_a_full_queue_drops_counts_and_reports_without_blocking_the_caller(tmp_path: Path) -> None:
    # A FIFO nobody reads yet is a disk that has stopped: the writer thread blocks in write().
    fifo = tmp_path / "stalled.log"
    os.mkfifo(fifo)
    release = threading.Event()
    received: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as pipe:
            release.wait()
            received.append(pipe.read())

    reader_thread = threading.Thread(target=reader)
    reader_thread.start()
    total = 5_000
    try:
        handle = configure_logging(
            LoggingSettings(
                sink="file",
                file=LogFileSettings(path=fifo, rotation="none"),
                non_blocking=True,
                queue_size=100,
            )
        )
        log = get_logger("svc")
        for i in range(total):
            # 5,000 lines of 1 kB: more than any pipe buffer holds, so the writer must block.
            log.info("while the disk is stuck", n=i, padding="x" * 1_000)
        # Every call above returned although the sink has been blocked: the caller never waits.
        dropped = handle.stats.dropped
        assert dropped > 0
    finally:
        release.set()
        assert shutdown_logging(timeout=30)
        reader_thread.join()

    lines = [json.loads(line) for line in received[0].splitlines()]
    reports = [r for r in lines if r["event"] == "log records dropped"]
    records = [r for r in lines if r["event"] == "while the disk is stuck"]
    assert reports
    assert all(r["level"] == "warning" and r["reason"] == "queue full" for r in reports)
    assert sum(r["dropped"] for r in reports) == dropped
    assert len(records) + dropped == total


def test_a_failing_sink_is_counted_and_reported_not_raised(capfd: pytest.CaptureFixture[str]) -> None:
    handle = configure_logging(
        LoggingSettings(
            sink="file", file=LogFileSettings(path=Path("/dev/full"), rotation="none"), non_blocking=True
        )
    )
    for i in range(10):
        get_logger("svc").info("into a full disk", n=i)
    handle.flush(timeout=10)

    assert handle.stats.dropped == 10
    assert "cannot write log records" in capfd.readouterr().err


def test_a_failing_sink_in_blocking_mode_does_not_raise_into_the_caller(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging(
        LoggingSettings(sink="file", file=LogFileSettings(path=Path("/dev/full"), rotation="none"))
    )
    get_logger("svc").info("into a full disk")

    assert "could not log a record" in capfd.readouterr().err


def test_records_logged_right_before_exit_are_flushed_by_atexit(tmp_path: Path) -> None:
    path = tmp_path / "exit.log"
    script = textwrap.dedent(
        f"""
        from mainspring.config import LogFileSettings, LoggingSettings
        from mainspring.logging import configure_logging, get_logger

        configure_logging(LoggingSettings(
            sink="file", file=LogFileSettings(path={str(path)!r}, rotation="none"),
            non_blocking=True, queue_size=100_000,
        ))
        log = get_logger("exit")
        for i in range(10_000):
            log.info("before exit", n=i)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)

    assert len(path.read_text().splitlines()) == 10_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_writer(file_settings: Settings, log_path: Path, read_json: Read) -> None:
    handle = configure_logging(file_settings(non_blocking=True))
    get_logger("svc").info("parent before fork")
    handle.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            get_logger("svc").info("from the child")
            code = 0 if shutdown_logging(timeout=10) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    get_logger("svc").info("parent after fork")
    shutdown_logging()

    assert os.waitstatus_to_exitcode(status) == 0
    events = sorted(r["event"] for r in read_json(log_path))
    assert events == ["from the child", "parent after fork", "parent before fork"]
