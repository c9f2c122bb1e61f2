"""``Service``: dependency order, reverse stop, failed starts, timeouts, signals."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from mainspring.errors import ConfigError
from mainspring.service import Service, ServiceStartError


class Recorder:
    """A component that writes its start and stop into a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail: bool = False,
        start_delay: float = 0.0,
        stop_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail
        self.start_delay = start_delay
        self.stop_delay = stop_delay

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        if self.fail:
            raise RuntimeError(f"{self.name} cannot connect")
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        await asyncio.sleep(self.stop_delay)
        self.journal.append(f"stop {self.name}")


async def test_components_start_in_dependency_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    service = Service(name="orders")
    service.add("relay", Recorder("relay", journal), depends_on=["db", "broker"])
    service.add("broker", Recorder("broker", journal))
    db = service.add("db", Recorder("db", journal))
    assert service.get("db") is db
    async with service:
        assert service.ready
        assert service.started
    # Dependencies first, in the order the component lists them; then the dependent one.
    assert journal == ["start db", "start broker", "start relay", "stop relay", "stop broker", "stop db"]
    assert not service.ready


async def test_a_failed_start_stops_the_started_ones_and_names_the_component() -> None:
    journal: list[str] = []
    service = Service()
    service.add("db", Recorder("db", journal))
    service.add("cache", Recorder("cache", journal, fail=True))
    service.add("web", Recorder("web", journal))
    with pytest.raises(
        ServiceStartError, match="'cache' failed to start: RuntimeError: cache cannot connect"
    ) as info:
        await service.start()
    assert info.value.component == "cache"
    assert journal == ["start db", "stop db"]
    assert not service.ready


async def test_start_and_stop_timeouts() -> None:
    journal: list[str] = []
    slow_start = Service()
    slow_start.add("db", Recorder("db", journal, start_delay=5), start_timeout=0.05)
    with pytest.raises(ServiceStartError, match=r"did not start within 0\.05 s"):
        await slow_start.start()

    journal.clear()
    slow_stop = Service()
    slow_stop.add("db", Recorder("db", journal))
    slow_stop.add("broker", Recorder("broker", journal, stop_delay=5), stop_timeout=0.05)
    await slow_stop.start()
    await slow_stop.stop()  # the broker's stop times out; the database still stops
    assert journal == ["start db", "start broker", "stop db"]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda s: s.add("a", object()), "must have async start"),
        (lambda s: (s.add("a", Recorder("a", [])), s.add("a", Recorder("a", []))), "already registered"),
        (lambda s: s.add("", Recorder("a", [])), "non-empty"),
        (lambda s: s.add("a", Recorder("a", []), stop_timeout=0), "stop_timeout"),
    ],
)
def test_bad_registrations_are_refused(build: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(Service())


async def test_unknown_dependencies_and_cycles_are_refused_at_start() -> None:
    unknown = Service()
    unknown.add("relay", Recorder("relay", []), depends_on=["db"])
    with pytest.raises(ConfigError, match="depends on 'db', which is not registered"):
        await unknown.start()
    cycle = Service()
    cycle.add("a", Recorder("a", []), depends_on=["b"])
    cycle.add("b", Recorder("b", []), depends_on=["a"])
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        await cycle.start()


async def test_sigterm_turns_readiness_off_then_stops_everything() -> None:
    journal: list[str] = []
    service = Service(shutdown_delay=0.05)
    service.add("db", Recorder("db", journal))
    readiness: list[bool] = []
    service.on_readiness_change(readiness.append)

    ready = asyncio.Event()
    service.on_readiness_change(lambda now: ready.set() if now else None)

    async def send_sigterm() -> None:
        await ready.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    sender = asyncio.create_task(send_sigterm())
    await asyncio.wait_for(service.run(), 10)
    await sender
    assert journal == ["start db", "stop db"]
    assert readiness == [True, False]


async def test_run_returns_when_main_returns() -> None:
    journal: list[str] = []
    service = Service()
    service.add("db", Recorder("db", journal))

    async def main() -> None:
        journal.append("main")

    await service.run(main)
    assert journal == ["start db", "main", "stop db"]
