"""Health checks: named async probes with timeouts, run in parallel, cached briefly.

Statuses follow the IETF health-check draft (``draft-inadarei-api-health-check``): ``pass``, ``warn``,
``fail``. A critical check that fails makes the service not ready (HTTP 503); a non-critical one is
reported as ``warn`` and leaves readiness alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from mainspring.errors import ConfigError, MainspringError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from mainspring.observability._metrics import MetricsRegistry

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "CheckReport",
    "CheckResult",
    "HealthCheck",
    "HealthChecker",
    "HealthReport",
    "HealthStatus",
]

log = get_logger("mainspring.observability")

#: The media type of the draft's JSON body.
HEALTH_CONTENT_TYPE: Final = "application/health+json"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,99}")


class HealthStatus(enum.StrEnum):
    """A check's or a report's status; ``fail`` is worst."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a probe returns: a status, a human-readable ``output`` and optional observed values."""

    status: HealthStatus = HealthStatus.PASS
    output: str = ""
    observed: Mapping[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def passed(cls, output: str = "", /, **observed: float | int | str) -> CheckResult:
        """A passing result."""
        return cls(HealthStatus.PASS, output, observed)

    @classmethod
    def warned(cls, output: str, /, **observed: float | int | str) -> CheckResult:
        """A degraded result: working, but worth a look."""
        return cls(HealthStatus.WARN, output, observed)

    @classmethod
    def failed(cls, output: str, /, **observed: float | int | str) -> CheckResult:
        """A failing result."""
        return cls(HealthStatus.FAIL, output, observed)


#: A probe: an async function of no arguments. Returning ``None`` means pass; raising means fail.
Probe = Callable[[], Awaitable[CheckResult | None]]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A named probe with its timeout and whether readiness depends on it.

    ``critical=False`` turns a failure into ``warn``: the service stays ready (a cache, say, whose
    outage only makes it slower).
    """

    name: str
    probe: Probe
    timeout: float = 2.0
    critical: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"a health check name must be 1-100 lowercase letters, digits, '_', '.', ':' or '-', "
                f"starting with a letter or digit; got {self.name!r}"
            )
        if not callable(self.probe):
            raise ConfigError(
                f"health check {self.name!r}: probe must be an async callable, got {self.probe!r}"
            )
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"health check {self.name!r}: timeout must be > 0 seconds, got {timeout!r}")


@dataclass(frozen=True, slots=True)
class CheckReport:
    """One check's outcome in a :class:`HealthReport`; ``latency`` is the probe's run time in seconds."""

    name: str
    status: HealthStatus
    critical: bool
    latency: float
    output: str
    observed: Mapping[str, float | int | str]
    time: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the draft's check object (``observedValue`` is the latency in milliseconds)."""
        body: dict[str, Any] = {
            "status": self.status.value,
            "observedValue": round(self.latency * 1000, 3),
            "observedUnit": "ms",
            "critical": self.critical,
            "time": self.time.isoformat(),
        }
        if self.output:
            body["output"] = self.output
        if self.observed:
            body["details"] = dict(self.observed)
        return body


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The overall status and each check's report; :attr:`http_status` is 200, or 503 on ``fail``."""

    status: HealthStatus
    checks: tuple[CheckReport, ...] = ()
    output: str = ""

    @property
    def http_status(self) -> int:
        """200 for ``pass`` and ``warn``, 503 for ``fail``."""
        return 503 if self.status is HealthStatus.FAIL else 200

    def check(self, name: str) -> CheckReport:
        """Return the report of check ``name``; ``KeyError`` if it did not run."""
        for report in self.checks:
            if report.name == name:
                return report
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body: ``{"status": ..., "checks": {"<name>": [{...}]}}``."""
        body: dict[str, Any] = {"status": self.status.value}
        if self.output:
            body["output"] = self.output
        if self.checks:
            body["checks"] = {report.name: [report.to_dict()] for report in self.checks}
        return body


def _overall(checks: tuple[CheckReport, ...]) -> HealthStatus:
    statuses = {report.status for report in checks}
    if HealthStatus.FAIL in statuses:
        return HealthStatus.FAIL
    if HealthStatus.WARN in statuses:
        return HealthStatus.WARN
    return HealthStatus.PASS


class HealthChecker:
    """Run named health checks in parallel, each within its timeout, and cache the report briefly.

    ::

        health = HealthChecker()
        health.add(database_check(db))

        @health.check("payments-api", timeout=1.0, critical=False)
        async def payments() -> None:
            await client.get("/ping")

        report = await health.ready()  # report.http_status, report.to_dict()

    :meth:`live` says the process answers, :meth:`ready` runs the checks (readiness fails only on a
    critical failure), :meth:`startup` passes once :meth:`mark_started` was called. Reports are cached
    for ``cache_ttl`` seconds and concurrent callers share one run, so probes every few seconds from
    many sources cost one round of checks. With ``metrics``, every run sets ``health_check_status``.
    """

    def __init__(self, *, cache_ttl: float = 1.0, metrics: MetricsRegistry | None = None) -> None:
        """Hold no checks yet; reports live ``cache_ttl`` seconds (0 turns caching off)."""
        if (
            isinstance(cache_ttl, bool)
            or not isinstance(cache_ttl, int | float)
            or not 0 <= cache_ttl < math.inf
        ):
            raise ConfigError(f"cache_ttl must be >= 0 seconds, got {cache_ttl!r}")
        self.cache_ttl = float(cache_ttl)
        self.metrics = metrics
        self._checks: dict[str, HealthCheck] = {}
        self._started = False
        self._cached: tuple[float, HealthReport] | None = None
        self._lock = asyncio.Lock()

    @property
    def checks(self) -> list[HealthCheck]:
        """The registered checks, in registration order."""
        return list(self._checks.values())

    @property
    def started(self) -> bool:
        """Whether :meth:`mark_started` was called."""
        return self._started

    def add(self, check: HealthCheck) -> HealthCheck:
        """Register ``check``; its name must be new."""
        if not isinstance(check, HealthCheck):
            raise ConfigError(f"add() needs a HealthCheck, got {type(check).__name__}")
        if check.name in self._checks:
            raise ConfigError(f"a health check named {check.name!r} is already registered")
        self._checks[check.name] = check
        self._cached = None
        return check

    def check(self, name: str, *, timeout: float = 2.0, critical: bool = True) -> Callable[[Probe], Probe]:
        """Register the decorated async function as check ``name`` (see :class:`HealthCheck`)."""

        def register(probe: Probe) -> Probe:
            self.add(HealthCheck(name, probe, timeout=timeout, critical=critical))
            return probe

        return register

    def mark_started(self) -> None:
        """Say that the service finished starting (the runtime calls it); :meth:`startup` passes now."""
        self._started = True

    async def live(self) -> HealthReport:
        """Liveness: the process and its event loop answer. Runs no checks: a dependency's outage must
        not make the orchestrator restart a healthy process."""
        return HealthReport(HealthStatus.PASS)

    async def startup(self) -> HealthReport:
        """Startup: ``pass`` once :meth:`mark_started` was called, ``fail`` before."""
        if self._started:
            return HealthReport(HealthStatus.PASS)
        return HealthReport(HealthStatus.FAIL, output="the service is still starting")

    async def ready(self, *, fresh: bool = False) -> HealthReport:
        """Readiness: run every check (or reuse a report younger than ``cache_ttl``, unless ``fresh``).

        ``fail`` if a critical check failed, ``warn`` if any check warned or a non-critical one failed.
        """
        cached = self._cached
        if not fresh and cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1]
        async with self._lock:
            # Whoever waited for the lock reuses the report the holder just made.
            cached = self._cached
            if not fresh and cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
                return cached[1]
            report = await self.run()
            self._cached = (time.monotonic(), report)
            return report

    async def run(self) -> HealthReport:
        """Run every check now, in parallel, bypassing the cache."""
        checks = tuple(await asyncio.gather(*(self._run_one(check) for check in self._checks.values())))
        report = HealthReport(_overall(checks), checks)
        if self.metrics is not None:
            self.metrics.record_health(report)
        return report

    async def _run_one(self, check: HealthCheck) -> CheckReport:
        now = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(check.timeout):
                result = await check.probe()
        except TimeoutError:
            result = CheckResult.failed(f"timed out after {check.timeout:g} s")
        except MainspringError as exc:
            result = CheckResult.failed(f"{exc.code}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - a probe's failure is the check's answer, not a crash
            result = CheckResult.failed(f"{type(exc).__name__}: {exc}")
        latency = time.perf_counter() - started
        if result is None:
            result = CheckResult.passed()
        elif not isinstance(result, CheckResult):
            result = CheckResult.failed(
                f"the probe returned {type(result).__name__}, not a CheckResult or None"
            )
        status = result.status
        output = result.output
        if status is HealthStatus.FAIL:
            log.warning("health check failed", check=check.name, critical=check.critical, output=output[:300])
            if not check.critical:
                status = HealthStatus.WARN
                output = f"{output} (not critical)" if output else "failed (not critical)"
        return CheckReport(check.name, status, check.critical, latency, output, dict(result.observed), now)
