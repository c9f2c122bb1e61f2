"""Logging throughput: JSON lines to a file, records per second, mainspring against the alternatives.

Every variant writes the same record (four fields, one of them a nested dict) inside
``bind_context(correlation_id=..., request_id=...)`` to a file in a temporary directory:

1. mainspring, non-blocking (``non_blocking=True``): the caller's rate, and the rate until the last
   record is on disk (``flush`` done);
2. mainspring, blocking file sink;
3. plain structlog: ``merge_contextvars``, level, ISO timestamp, orjson ``JSONRenderer`` to a
   ``BytesLogger`` over the file (no redaction);
4. the standard library: a ``FileHandler`` with a small ``json.dumps`` formatter that adds the context
   ids.

mainspring runs with redaction on (default keys and patterns); two extra rows show the same blocking
run with redaction off, and a standard-library logger going through mainspring's root handler. Rounds
alternate the variants; the table
shows medians and the ratio to plain structlog. Usage: ``python benchmarks/logging_bench.py [--rounds 5]
[--records 100000]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from mainspring.config import LogFileSettings, LoggingSettings
from mainspring.context import bind_context, get_context
from mainspring.logging import configure_logging, get_logger, shutdown_logging

CUSTOMER = {"id": 7, "tier": "gold", "email": "ada@example.com"}
CONTEXT = {
    "correlation_id": "5f0c6a1e9d2b4c7f8a3e1d0b2c4f6a8e",
    "request_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
}


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def run_mainspring(
    path: Path, records: int, *, non_blocking: bool, redact: bool = True, stdlib: bool = False
) -> dict[str, float]:
    """Log ``records`` records through mainspring; return the caller's and the end-to-end seconds."""
    settings = LoggingSettings(
        sink="file",
        file=LogFileSettings(path=path, rotation="none"),
        non_blocking=non_blocking,
        redact=redact,
    )
    handle = configure_logging(settings)
    log = get_logger("bench")
    third_party = logging.getLogger("bench.third_party")
    with bind_context(**CONTEXT):
        start = time.perf_counter()
        if stdlib:
            for i in range(records):
                third_party.info(
                    "order placed",
                    extra={"order_id": i, "sku": "sku-123", "amount": 12.5, "customer": CUSTOMER},
                )
        else:
            for i in range(records):
                log.info("order placed", order_id=i, sku="sku-123", amount=12.5, customer=CUSTOMER)
        called = time.perf_counter()
        handle.flush(timeout=60)
        flushed = time.perf_counter()
    dropped = handle.stats.dropped
    shutdown_logging()
    lines = _count_lines(path)
    if lines != records or dropped:
        print(f"warning: mainspring wrote {lines} lines of {records} (dropped {dropped})", file=sys.stderr)
    return {"call": called - start, "total": flushed - start, "dropped": float(dropped)}


def run_structlog(path: Path, records: int) -> dict[str, float]:
    """Log through a plain, fast structlog configuration writing JSON bytes to the file."""
    with path.open("wb") as file:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(file),
            cache_logger_on_first_use=True,
        )
        log = structlog.get_logger("bench")
        structlog.contextvars.bind_contextvars(**CONTEXT)
        start = time.perf_counter()
        for i in range(records):
            log.info("order placed", order_id=i, sku="sku-123", amount=12.5, customer=CUSTOMER)
        elapsed = time.perf_counter() - start
        structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    return {"call": elapsed, "total": elapsed, "dropped": 0.0}


class _JsonFormatter(logging.Formatter):
    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "timestamp": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(get_context().log_fields)
        for key, value in record.__dict__.items():
            if key not in self._standard:
                data[key] = value
        return json.dumps(data, default=str)


def run_stdlib(path: Path, records: int) -> dict[str, float]:
    """Log through the standard library with a json.dumps formatter and a FileHandler."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(_JsonFormatter())
    logger = logging.getLogger("bench.stdlib")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    with bind_context(**CONTEXT):
        start = time.perf_counter()
        for i in range(records):
            logger.info(
                "order placed", extra={"order_id": i, "sku": "sku-123", "amount": 12.5, "customer": CUSTOMER}
            )
        elapsed = time.perf_counter() - start
    logger.removeHandler(handler)
    logger.propagate = True
    handler.close()
    return {"call": elapsed, "total": elapsed, "dropped": 0.0}


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=100_000)
    options = parser.parse_args()

    variants: dict[str, Callable[[Path, int], dict[str, float]]] = {
        "mainspring non-blocking": lambda p, n: run_mainspring(p, n, non_blocking=True),
        "mainspring blocking file": lambda p, n: run_mainspring(p, n, non_blocking=False),
        "mainspring blocking file, redaction off": lambda p, n: run_mainspring(
            p, n, non_blocking=False, redact=False
        ),
        "stdlib logger through mainspring, blocking": lambda p, n: run_mainspring(
            p, n, non_blocking=False, stdlib=True
        ),
        "plain structlog (orjson, BytesLogger)": run_structlog,
        "stdlib logging + json.dumps formatter": run_stdlib,
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="mainspring-bench-") as tmp:
        for round_number in range(options.rounds):
            for index, (name, run) in enumerate(variants.items()):
                path = Path(tmp) / f"r{round_number}-v{index}.log"
                results[name].append(run(path, options.records))
                path.unlink()
            print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

    def rate(name: str, key: str) -> float:
        return statistics.median(options.records / r[key] for r in results[name])

    baseline = rate("plain structlog (orjson, BytesLogger)", "call")
    print(
        f"\n{options.rounds} rounds x {options.records:,} records, median; "
        f"Python {platform.python_version()}, structlog {structlog.__version__}, "
        f"orjson {orjson.__version__}\n"
    )
    print("| variant | records/s | vs plain structlog |")
    print("|---|---:|---:|")
    rows = [
        ("mainspring non-blocking: caller", rate("mainspring non-blocking", "call")),
        ("mainspring non-blocking: until flushed", rate("mainspring non-blocking", "total")),
        ("mainspring blocking file", rate("mainspring blocking file", "call")),
        (
            "mainspring blocking file, redaction off",
            rate("mainspring blocking file, redaction off", "call"),
        ),
        (
            "stdlib `logging.getLogger` through mainspring, blocking",
            rate("stdlib logger through mainspring, blocking", "call"),
        ),
        ("plain structlog (orjson, BytesLogger)", baseline),
        ("stdlib logging + json.dumps formatter", rate("stdlib logging + json.dumps formatter", "call")),
    ]
    for label, value in rows:
        print(f"| {label} | {value:,.0f} | {value / baseline:.2f}x |")
    drops = sum(r["dropped"] for r in results["mainspring non-blocking"])
    print(f"\nrecords dropped in non-blocking mode (all rounds): {drops:.0f}")


if __name__ == "__main__":
    main()
