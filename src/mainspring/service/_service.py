"""``Service``: the components of one process, started in dependency order and stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from mainspring.errors import ConfigError, MainspringError, ServiceUnavailableError
from mainspring.logging import get_logger

__all__ = ["Component", "ComponentInfo", "Service", "ServiceStartError"]

log = get_logger("mainspring.service")

C = TypeVar("C", bound="Component")


@runtime_checkable
class Component(Protocol):
    """Anything with ``async start()`` and ``async stop()``: databases, caches, brokers, relays, ..."""

    async def start(self) -> None:
        """Open connections and start background work."""
        ...

    async def stop(self) -> None:
        """Release everything; safe to call twice."""
        ...


class ServiceStartError(ServiceUnavailableError):
    """A component failed to start (or did not start in time); ``component`` names it."""

    code = "service_start_failed"

    def __init__(self, message: str, *, component: str) -> None:
        super().__init__(message, details={"component": component})
        self.component = component


@dataclass(slots=True)
class ComponentInfo:
    """A registered component and how the service treats it."""

    name: str
    component: Component
    depends_on: tuple[str, ...] = ()
    start_timeout: float = 30.0
    stop_timeout: float = 10.0
    started: bool = False
    #: Seconds the last start took (``None`` before it started).
    start_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Service:
    """The process: settings plus components, with one lifecycle.

    ::

        service = Service(settings)
        db = service.add("database", Database.from_settings(settings.database))
        broker = service.add("broker", create_broker(settings.messaging))
        service.add("outbox-relay", OutboxRelay(db, broker), depends_on=["database", "broker"])

        await service.run()  # start, wait for SIGTERM/SIGINT, drain and stop

    Components start in dependency order (a component's dependencies first, in the order it lists
    them; otherwise registration order) and stop in the reverse order, each within its own timeout.
    A component that fails to start stops the ones already started and raises
    :class:`ServiceStartError` naming it. On SIGTERM or SIGINT readiness
    turns false first (so load balancers stop sending), then the service waits ``shutdown_delay``
    seconds, then stops the components.
    """

    def __init__(self, settings: Any = None, *, name: str | None = None, shutdown_delay: float = 0.0) -> None:
        """Hold ``settings`` (any object; usually :class:`mainspring.config.Settings`)."""
        self.settings = settings
        self.name = name or str(getattr(settings, "service_name", None) or "service")
        if shutdown_delay < 0:
            raise ConfigError(f"shutdown_delay must be >= 0 seconds, got {shutdown_delay!r}")
        self.shutdown_delay = shutdown_delay
        self._components: dict[str, ComponentInfo] = {}
        self._order: list[ComponentInfo] = []
        self._started = False
        self._ready = False
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._on_ready: list[Callable[[bool], None]] = []

    # -- registration -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        component: C,
        *,
        depends_on: Iterable[str] = (),
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> C:
        """Register ``component`` under ``name``; return it (so ``db = service.add("db", Database(...))``)."""
        if self._started:
            raise ConfigError(f"cannot add component {name!r}: the service has started")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"component name must be a non-empty string, got {name!r}")
        if name in self._components:
            raise ConfigError(f"a component named {name!r} is already registered")
        if not isinstance(component, Component):
            raise ConfigError(
                f"component {name!r} must have async start() and stop(), got {type(component).__name__}"
            )
        for label, value in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{label} of {name!r} must be > 0 seconds, got {value!r}")
        self._components[name] = ComponentInfo(
            name, component, tuple(depends_on), float(start_timeout), float(stop_timeout)
        )
        return component

    def get(self, name: str) -> Any:
        """Return the component registered as ``name``."""
        try:
            return self._components[name].component
        except KeyError:
            raise ConfigError(f"no component named {name!r}; known: {sorted(self._components)}") from None

    @property
    def components(self) -> Mapping[str, ComponentInfo]:
        """The registered components by name (in registration order)."""
        return dict(self._components)

    def _resolve_order(self) -> list[ComponentInfo]:
        order: list[ComponentInfo] = []
        state: dict[str, str] = {}

        def visit(info: ComponentInfo, path: tuple[str, ...]) -> None:
            if state.get(info.name) == "done":
                return
            if state.get(info.name) == "visiting":
                cycle = " -> ".join((*path, info.name))
                raise ConfigError(f"components depend on each other in a cycle: {cycle}")
            state[info.name] = "visiting"
            for dependency in info.depends_on:
                found = self._components.get(dependency)
                if found is None:
                    raise ConfigError(
                        f"component {info.name!r} depends on {dependency!r}, which is not registered"
                    )
                visit(found, (*path, info.name))
            state[info.name] = "done"
            order.append(info)

        for info in self._components.values():
            visit(info, ())
        return order

    # -- state ------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once every component has started (until stop begins)."""
        return self._started and not self._stopping

    @property
    def ready(self) -> bool:
        """True while the service takes work: started and not draining."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        """Turn readiness on or off (the runtime's readiness probe reads it); listeners are told."""
        if ready == self._ready:
            return
        self._ready = ready
        for listener in list(self._on_ready):
            listener(ready)

    def on_readiness_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ready)`` whenever readiness changes."""
        self._on_ready.append(listener)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component in dependency order; on failure stop the started ones and raise."""
        if self._started:
            return
        self._order = self._resolve_order()
        self._stopping = False
        for info in self._order:
            began = time.monotonic()
            try:
                async with asyncio.timeout(info.start_timeout):
                    await info.component.start()
            except TimeoutError as exc:
                await self._stop_started()
                raise ServiceStartError(
                    f"component {info.name!r} did not start within {info.start_timeout:g} s",
                    component=info.name,
                ) from exc
            except Exception as exc:  # any failure of any component: stop the started ones, name it
                await self._stop_started()
                reason = str(exc) if isinstance(exc, MainspringError) else f"{type(exc).__name__}: {exc}"
                raise ServiceStartError(
                    f"component {info.name!r} failed to start: {reason}", component=info.name
                ) from exc
            info.started = True
            info.start_seconds = time.monotonic() - began
            log.info("component started", component=info.name, seconds=round(info.start_seconds, 3))
        self._started = True
        self.set_ready(True)
        log.info("service started", service=self.name, components=len(self._order))

    async def stop(self) -> None:
        """Turn readiness off and stop the started components in reverse order (safe to call twice)."""
        if self._stopping:
            return
        self._stopping = True
        self.set_ready(False)
        await self._stop_started()
        self._started = False
        self._stopping = False
        log.info("service stopped", service=self.name)

    async def _stop_started(self) -> None:
        for info in reversed(self._order):
            if not info.started:
                continue
            info.started = False
            try:
                async with asyncio.timeout(info.stop_timeout):
                    await info.component.stop()
            except TimeoutError:
                log.error(
                    "component did not stop in time; moving on",
                    component=info.name,
                    timeout=info.stop_timeout,
                )
            except Exception as exc:  # noqa: BLE001 - one failing stop must not keep the others running
                log.error(
                    "component failed to stop", component=info.name, error=f"{type(exc).__name__}: {exc}"
                )
            else:
                log.info("component stopped", component=info.name)

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (what SIGTERM and SIGINT do)."""
        self.set_ready(False)
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self, main: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start, run until SIGTERM/SIGINT (or :meth:`request_stop`, or ``main`` returning), then stop.

        Readiness turns false as soon as the signal arrives; the components stop after
        ``shutdown_delay`` seconds, in reverse order.
        """
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / Windows
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            await self.start()
            waiters: list[asyncio.Task[Any]] = [asyncio.create_task(self._stop_requested.wait())]
            if main is not None:
                waiters.append(asyncio.create_task(_call(main)))
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()  # a failing main() fails run(), after the stop below
        finally:
            self.set_ready(False)
            if self.shutdown_delay and self._started:
                await asyncio.sleep(self.shutdown_delay)
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("shutdown requested", service=self.name, signal=sig.name)
        self.request_stop()


async def _call(main: Callable[[], Awaitable[object]]) -> object:
    return await main()
