"""Multiprocess mode: two worker processes count into one directory; the render is their sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mainspring.observability import MetricsRegistry

WORKER = """
import sys
from mainspring.observability import CheckReport, HealthReport, HealthStatus, get_metrics
import datetime as dt

requests, status = int(sys.argv[1]), HealthStatus(sys.argv[2])
metrics = get_metrics()
for _ in range(requests):
    metrics.record_http("GET", "/orders/{order_id}", 200, 0.01)
metrics.record_message("orders", "billing", "handled", 0.02)
check = CheckReport("database", status, True, 0.001, "", {}, dt.datetime.now(dt.UTC))
metrics.record_health(HealthReport(status, (check,)))
"""


def _run_workers(directory: Path, *jobs: tuple[int, str]) -> list[int]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(n), status], env=env, stderr=subprocess.PIPE)
        for n, status in jobs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    return [proc.pid for proc in procs]


def _values(metrics: MetricsRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_two_workers_counters_are_summed_and_the_health_gauge_keeps_the_worst(tmp_path: Path) -> None:
    pids = _run_workers(tmp_path, (3, "pass"), (2, "fail"))
    metrics = MetricsRegistry(multiprocess_dir=tmp_path)
    values = _values(metrics)
    http = frozenset({("method", "GET"), ("route", "/orders/{order_id}"), ("status", "200")})
    assert values["http_requests_total", http] == 5
    assert values["http_request_duration_seconds_count", http] == 5
    messages = frozenset({("topic", "orders"), ("group", "billing"), ("outcome", "handled")})
    assert values["messaging_messages_total", messages] == 2
    # livemin: the worst status of the live workers; a dead worker's gauge goes with mark_process_dead.
    assert values["health_check_status", frozenset({("check", "database")})] == 0.0
    metrics.mark_process_dead(pids[1])
    after = _values(metrics)
    assert after["health_check_status", frozenset({("check", "database")})] == 1.0
    assert after["http_requests_total", http] == 5
