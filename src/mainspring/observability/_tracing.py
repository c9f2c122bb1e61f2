"""Distributed tracing with OpenTelemetry: ``init_tracing``, ``auto_instrument`` and ``traced``.

Everything here is a no-op until :func:`init_tracing` runs with ``tracing.enabled``; only then is the
``otel`` extra imported (and a missing one reported as :class:`~mainspring.errors.MissingDependencyError`).
While a span is active its trace and span ids are bound in :mod:`mainspring.context`, so every log
record and every outgoing call (``mainspring.context.inject``) carries them. See ``docs/tracing.md``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar, cast

from mainspring._compat import require
from mainspring.config import Settings
from mainspring.errors import ConfigError
from mainspring.logging import get_logger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from mainspring.observability._tracing_sdk import SwitchingTracerProvider

P = ParamSpec("P")
R = TypeVar("R")

#: A span attribute value, as OpenTelemetry accepts it.
AttributeValue: TypeAlias = (
    str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
)

log = get_logger("mainspring.observability")

#: The instrumentations :func:`auto_instrument` knows: name -> (library module, instrumentor path).
INSTRUMENTATIONS: dict[str, tuple[str, str]] = {
    "sqlalchemy": ("sqlalchemy", "opentelemetry.instrumentation.sqlalchemy:SQLAlchemyInstrumentor"),
    "redis": ("redis", "opentelemetry.instrumentation.redis:RedisInstrumentor"),
    "httpx": ("httpx", "opentelemetry.instrumentation.httpx:HTTPXClientInstrumentor"),
    "aio-pika": ("aio_pika", "opentelemetry.instrumentation.aio_pika:AioPikaInstrumentor"),
}


@dataclass(slots=True)
class _Active:
    settings: Settings
    handle: Tracing
    tracer: Tracer


_active: _Active | None = None
_switching: SwitchingTracerProvider | None = None


class Tracing:
    """The tracing :func:`init_tracing` installed: flush it, shut it down, or see that it is off."""

    def __init__(self, enabled: bool, provider: TracerProvider | None = None) -> None:
        #: Whether spans are being created (``tracing.enabled`` and the extra installed).
        self.enabled = enabled
        self._provider = provider

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Export the spans still buffered; return whether everything went out within ``timeout`` s."""
        if self._provider is None:
            return True
        return bool(self._provider.force_flush(int(timeout * 1000)))

    def shutdown(self) -> None:
        """Flush and stop exporting; tracing becomes a no-op again (if this is still the active one)."""
        global _active
        if self._provider is None:
            return
        if _active is not None and _active.handle is self:
            _active = None
            if _switching is not None:
                _switching.switch(None)
        self._provider.shutdown()
        self._provider = None
        self.enabled = False


def init_tracing(settings: Settings, *, exporter: SpanExporter | None = None) -> Tracing:
    """Set up tracing from ``settings.tracing``: provider, sampler, resource and exporter.

    With ``enabled: false`` nothing is imported and a disabled :class:`Tracing` comes back. Otherwise
    the spans carry the resource ``service.name`` / ``service.version`` / ``deployment.environment``
    from ``settings``, new traces are sampled at ``sample_ratio`` (a caller's decision is kept), and
    they go to the configured exporter (``none``: ids for logs and propagation only). ``exporter``
    overrides it, e.g. an ``InMemorySpanExporter`` in tests. Calling it again replaces the previous
    set-up (which is shut down).
    """
    global _active, _switching
    config = settings.tracing
    if not config.enabled:
        return Tracing(enabled=False)
    require("opentelemetry.sdk.trace", extra="otel", feature="tracing")
    from opentelemetry import trace

    from mainspring.observability import _tracing_sdk as sdk

    if _switching is None:
        switching = sdk.SwitchingTracerProvider()
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(switching)
        else:
            log.warning(
                "a global OpenTelemetry tracer provider is already set; mainspring's spans and "
                "auto_instrument() use their own, the other instrumentations keep the existing one"
            )
        _switching = switching
    sdk.install_mirroring()
    provider = sdk.build_provider(settings, exporter)
    handle = Tracing(enabled=True, provider=provider)
    previous = _active
    _active = _Active(settings, handle, _switching.get_tracer("mainspring"))
    _switching.switch(provider)
    if previous is not None:
        previous.handle.shutdown()
    log.info(
        "tracing enabled",
        exporter="custom" if exporter is not None else config.exporter,
        sample_ratio=config.sample_ratio,
    )
    return handle


def shutdown_tracing() -> None:
    """Flush and shut down the active tracing, if any; later spans are no-ops."""
    active = _active
    if active is not None:
        active.handle.shutdown()


def tracing_enabled() -> bool:
    """Say whether :func:`init_tracing` set up tracing that is still active."""
    return _active is not None


def excluded_urls_regex(paths: Sequence[str]) -> str:
    """Turn route paths (``/health/*``, ``/metrics``) into the regex OpenTelemetry matches URLs with.

    A trailing ``/*`` matches the path itself and everything below it; another ``*`` matches one path
    segment. Matching is on the whole path, after the scheme and host.
    """
    parts = []
    for path in paths:
        if path.endswith("/*"):
            body = re.escape(path[:-2]) + "(?:/.*)?"
        else:
            body = re.escape(path).replace(r"\*", "[^/]*")
        parts.append(rf"^[a-z]+://[^/]+{body}$")
    return ",".join(parts)


def _libraries(caller: str, libraries: Iterable[str] | None) -> list[str]:
    wanted = list(INSTRUMENTATIONS) if libraries is None else list(libraries)
    unknown = [name for name in wanted if name not in INSTRUMENTATIONS]
    if unknown:
        raise ConfigError(f"{caller}: unknown libraries {unknown}; known: {', '.join(INSTRUMENTATIONS)}")
    return wanted


def auto_instrument(app: Any = None, *, libraries: Iterable[str] | None = None) -> list[str]:
    """Instrument ``app`` (FastAPI) and the SQLAlchemy, redis, httpx and aio-pika clients that are installed.

    ``libraries`` limits the client libraries (names from :data:`INSTRUMENTATIONS`; default: all that
    are installed). Returns the names of what is instrumented (``["fastapi", "redis", ...]``); an
    empty list when tracing is off. The routes in ``tracing.excluded_urls`` (health probes and
    ``/metrics`` by default) are not traced. Safe to call again: what is instrumented stays so.
    """
    active = _active
    if active is None or _switching is None:
        return []
    wanted = _libraries("auto_instrument", libraries)
    done: list[str] = []
    if app is not None:
        fastapi = require("opentelemetry.instrumentation.fastapi", extra="otel", feature="FastAPI tracing")
        if not getattr(app, "_is_instrumented_by_opentelemetry", False):
            fastapi.FastAPIInstrumentor.instrument_app(
                app,
                tracer_provider=_switching,
                excluded_urls=excluded_urls_regex(active.settings.tracing.excluded_urls),
            )
        done.append("fastapi")
    for name in wanted:
        library, target = INSTRUMENTATIONS[name]
        module_name, _, class_name = target.partition(":")
        if importlib.util.find_spec(library) is None or importlib.util.find_spec(module_name) is None:
            continue
        instrumentor = getattr(importlib.import_module(module_name), class_name)()
        conflict = _dependency_conflict(instrumentor)
        if conflict is not None:
            # Skip quietly: calling instrument() would only log an error on every start.
            log.info("instrumentation skipped: unsupported library version", library=name, conflict=conflict)
            continue
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=_switching)
        if instrumentor.is_instrumented_by_opentelemetry:
            done.append(name)
        else:
            # The instrumentation refused (it logs why: usually a library version it does not support).
            log.warning("instrumentation not applied", library=name)
    log.info("auto-instrumented", instrumented=done)
    return done


def _dependency_conflict(instrumentor: Any) -> str | None:
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    return None if conflict is None else str(conflict)


def uninstrument(libraries: Iterable[str] | None = None) -> None:
    """Remove the client-library instrumentation :func:`auto_instrument` applied (default: all)."""
    for name in _libraries("uninstrument", libraries):
        library, target = INSTRUMENTATIONS[name]
        module_name, _, class_name = target.partition(":")
        if importlib.util.find_spec(library) is None or importlib.util.find_spec(module_name) is None:
            continue
        instrumentor = getattr(importlib.import_module(module_name), class_name)()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


class TracedSpan:
    """The span of a :func:`traced` block; every method is a no-op when tracing is off."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    @property
    def otel_span(self) -> Span | None:
        """The OpenTelemetry span, or ``None`` when tracing is off."""
        return self._span

    @property
    def is_recording(self) -> bool:
        """Whether the span is sampled and records what is set on it."""
        return self._span is not None and self._span.is_recording()

    @property
    def trace_id(self) -> str | None:
        """The trace id (32 hex digits), or ``None`` without a span."""
        if self._span is None:
            return None
        return format(self._span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str | None:
        """The span id (16 hex digits), or ``None`` without a span."""
        if self._span is None:
            return None
        return format(self._span.get_span_context().span_id, "016x")

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute on the span."""
        if self._span is not None:
            self._span.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Record a timestamped event on the span."""
        if self._span is not None:
            self._span.add_event(name, attributes)

    def record_exception(self, exc: BaseException) -> None:
        """Record ``exc`` on the span (an escaping exception is recorded without this)."""
        if self._span is not None:
            self._span.record_exception(exc)


_NO_SPAN = TracedSpan(None)


@contextmanager
def _span(name: str, attributes: Mapping[str, AttributeValue] | None) -> Iterator[TracedSpan]:
    active = _active
    if active is None:
        yield _NO_SPAN
        return
    # Records an escaping exception and sets the status to ERROR, then re-raises it.
    with active.tracer.start_as_current_span(name, attributes=attributes) as span:
        yield TracedSpan(span)


class traced:  # lower case: it reads like a function, @traced("name") and with traced("name")
    """Trace a function or a block in a span named ``name``: a decorator (sync or async) or a ``with``.

    ::

        @traced("orders.place")
        async def place(order: Order) -> None: ...

        with traced("orders.price", attributes={"items": 3}) as span:
            span.set_attribute("total", 42.0)

    The span is a child of the active one and the active one inside; an escaping exception is recorded
    on it and marks it as an error. The decorator's name defaults to the function's qualified name.
    When tracing is off it costs a function call. One ``traced`` object serves one ``with`` block at a
    time; a decorated function makes a new span per call, concurrently too.
    """

    __slots__ = ("_open", "attributes", "name")

    def __init__(
        self, name: str | None = None, *, attributes: Mapping[str, AttributeValue] | None = None
    ) -> None:
        self.name = name
        self.attributes = dict(attributes) if attributes else None
        self._open: list[AbstractContextManager[TracedSpan]] = []

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``fn`` so that each call runs in a new span."""
        name = self.name or f"{fn.__module__}.{fn.__qualname__}"
        attributes = self.attributes
        if inspect.iscoroutinefunction(fn):
            coroutine_fn = cast(Callable[P, Any], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with _span(name, attributes):
                    return await coroutine_fn(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with _span(name, attributes):
                return fn(*args, **kwargs)

        return wrapper

    def __enter__(self) -> TracedSpan:
        if _active is None:
            self._open.append(_NULL_BLOCK)
            return _NO_SPAN
        block = _span(self.name or "block", self.attributes)
        self._open.append(block)
        return block.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self._open.pop().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> TracedSpan:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self.__exit__(exc_type, exc, tb)


class _NullBlock(AbstractContextManager[TracedSpan]):
    def __enter__(self) -> TracedSpan:
        return _NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_BLOCK = _NullBlock()
