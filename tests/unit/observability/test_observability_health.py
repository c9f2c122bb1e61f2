"""HealthChecker: timeouts, parallelism, caching, criticality, probes' states and the JSON body."""

from __future__ import annotations

import asyncio
import json

import pytest

from mainspring.errors import ConfigError, ServiceUnavailableError
from mainspring.observability import (
    CheckResult,
    HealthCheck,
    HealthChecker,
    HealthStatus,
    MetricsRegistry,
    disk_check,
)
from mainspring.testing import capture_logs


async def test_a_slow_check_fails_with_its_timeout_and_the_others_are_unaffected() -> None:
    health = HealthChecker()
    never = asyncio.Event()

    @health.check("slow", timeout=0.1)
    async def slow() -> None:
        await never.wait()

    @health.check("fast", timeout=5)
    async def fast() -> CheckResult:
        return CheckResult.passed("quick")

    with capture_logs():
        report = await health.ready()
    assert report.status is HealthStatus.FAIL
    assert report.http_status == 503
    assert report.check("slow").status is HealthStatus.FAIL
    assert report.check("slow").output == "timed out after 0.1 s"
    assert report.check("fast").status is HealthStatus.PASS
    assert report.check("fast").output == "quick"


async def test_checks_run_in_parallel() -> None:
    # Each check waits until all three have started: run one after the other, they would all time out.
    health = HealthChecker()
    started: list[str] = []
    everyone = asyncio.Event()

    def make(name: str) -> HealthCheck:
        async def probe() -> None:
            started.append(name)
            if len(started) == 3:
                everyone.set()
            await everyone.wait()

        return HealthCheck(name, probe, timeout=5)

    for name in ("a", "b", "c"):
        health.add(make(name))
    report = await health.ready()
    assert report.status is HealthStatus.PASS, report.to_dict()
    assert sorted(started) == ["a", "b", "c"]


async def test_reports_are_cached_and_concurrent_callers_share_one_run() -> None:
    health = HealthChecker(cache_ttl=60)
    calls = 0

    @health.check("counted")
    async def counted() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)

    reports = await asyncio.gather(*(health.ready() for _ in range(10)))
    assert calls == 1
    assert all(r is reports[0] for r in reports)
    assert await health.ready() is reports[0]
    assert calls == 1
    await health.ready(fresh=True)
    assert calls == 2


async def test_zero_cache_ttl_runs_every_time() -> None:
    health = HealthChecker(cache_ttl=0)
    calls = 0

    @health.check("counted")
    async def counted() -> None:
        nonlocal calls
        calls += 1

    await health.ready()
    await health.ready()
    assert calls == 2


async def test_a_non_critical_failure_warns_and_keeps_readiness() -> None:
    health = HealthChecker()

    @health.check("cache", critical=False)
    async def cache() -> None:
        raise ServiceUnavailableError("redis is down", code="cache_down")

    @health.check("database")
    async def database() -> None:
        return None

    with capture_logs() as logs:
        report = await health.ready()
    assert report.status is HealthStatus.WARN
    assert report.http_status == 200
    entry = report.check("cache")
    assert entry.status is HealthStatus.WARN
    assert entry.output == "cache_down: redis is down (not critical)"
    assert any(e["event"] == "health check failed" and e["check"] == "cache" for e in logs)


async def test_a_probe_that_raises_fails_with_the_error_and_a_warn_result_warns() -> None:
    health = HealthChecker()

    @health.check("broken")
    async def broken() -> None:
        raise RuntimeError("socket closed")

    @health.check("degraded")
    async def degraded() -> CheckResult:
        return CheckResult.warned("slow replica", lag=3)

    with capture_logs():
        report = await health.ready()
    assert report.check("broken").status is HealthStatus.FAIL
    assert report.check("broken").output == "RuntimeError: socket closed"
    assert report.check("degraded").status is HealthStatus.WARN
    assert report.check("degraded").observed == {"lag": 3}
    assert report.status is HealthStatus.FAIL


async def test_json_body_follows_the_health_check_draft() -> None:
    health = HealthChecker()

    @health.check("database")
    async def database() -> CheckResult:
        return CheckResult.passed("ok", round_trip=0.001)

    body = (await health.ready()).to_dict()
    assert json.loads(json.dumps(body)) == body
    assert body["status"] == "pass"
    (entry,) = body["checks"]["database"]
    assert entry["status"] == "pass"
    assert entry["observedUnit"] == "ms"
    assert entry["observedValue"] >= 0
    assert entry["critical"] is True
    assert entry["output"] == "ok"
    assert entry["details"] == {"round_trip": 0.001}
    assert entry["time"].endswith("+00:00")


async def test_live_passes_startup_waits_for_mark_started() -> None:
    health = HealthChecker()

    @health.check("down")
    async def down() -> None:
        raise ServiceUnavailableError("down")

    live = await health.live()
    assert (live.status, live.http_status, live.checks) == (HealthStatus.PASS, 200, ())
    before = await health.startup()
    assert (before.status, before.http_status) == (HealthStatus.FAIL, 503)
    assert not health.started
    health.mark_started()
    after = await health.startup()
    assert (after.status, after.http_status) == (HealthStatus.PASS, 200)
    assert health.started


async def test_no_checks_is_ready() -> None:
    report = await HealthChecker().ready()
    assert (report.status, report.to_dict()) == (HealthStatus.PASS, {"status": "pass"})


async def test_every_run_sets_the_health_gauge() -> None:
    metrics = MetricsRegistry()
    health = HealthChecker(metrics=metrics, cache_ttl=0)
    state = {"result": CheckResult.passed()}

    @health.check("flaky")
    async def flaky() -> CheckResult:
        return state["result"]

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("health_check_status", {"check": "flaky"})

    await health.ready()
    assert gauge() == 1.0
    state["result"] = CheckResult.warned("slow")
    await health.ready()
    assert gauge() == 0.5
    state["result"] = CheckResult.failed("down")
    with capture_logs():
        await health.ready()
    assert gauge() == 0.0


async def test_disk_check_passes_warns_and_fails_by_threshold(tmp_path: object) -> None:
    health = HealthChecker()
    health.add(disk_check(str(tmp_path), name="roomy", warn_free_ratio=0.0, fail_free_ratio=0.0))
    health.add(disk_check(str(tmp_path), name="picky", warn_free_ratio=1.0, fail_free_ratio=0.0))
    health.add(disk_check(str(tmp_path), name="full", fail_free_ratio=1.0, warn_free_ratio=1.0))
    health.add(
        disk_check(
            str(tmp_path), name="bytes", warn_free_ratio=None, fail_free_ratio=None, min_free_bytes=2**62
        )
    )
    health.add(disk_check(f"{tmp_path}/missing/dir", name="missing"))
    with capture_logs():
        report = await health.ready()
    assert report.check("roomy").status is HealthStatus.PASS
    assert report.check("roomy").observed["free_bytes"] > 0
    assert report.check("picky").status is HealthStatus.WARN
    assert report.check("picky").output.startswith("disk filling up: ")
    assert report.check("full").status is HealthStatus.FAIL
    assert report.check("full").output.startswith("disk almost full: ")
    assert report.check("bytes").status is HealthStatus.FAIL
    assert report.check("missing").status is HealthStatus.FAIL
    assert report.check("missing").output.startswith("FileNotFoundError")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "health check name"),
        ({"name": ""}, "health check name"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": float("inf")}, "timeout must be > 0"),
        ({"probe": "not callable"}, "probe must be an async callable"),
    ],
)
def test_bad_checks_are_refused(kwargs: dict[str, object], message: str) -> None:
    async def probe() -> None:
        return None

    args: dict[str, object] = {"name": "ok", "probe": probe, **kwargs}
    with pytest.raises(ConfigError, match=message):
        HealthCheck(**args)  # type: ignore[arg-type]


def test_duplicate_names_and_bad_settings_are_refused() -> None:
    async def probe() -> None:
        return None

    health = HealthChecker()
    health.add(HealthCheck("db", probe))
    with pytest.raises(ConfigError, match="already registered"):
        health.add(HealthCheck("db", probe))
    with pytest.raises(ConfigError, match="cache_ttl"):
        HealthChecker(cache_ttl=-1)
    with pytest.raises(ConfigError, match="warn_free_ratio"):
        disk_check(".", warn_free_ratio=0.01, fail_free_ratio=0.5)
    with pytest.raises(ConfigError, match="fractions"):
        disk_check(".", fail_free_ratio=2)
