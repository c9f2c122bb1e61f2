"""The OpenTelemetry side of tracing; imported only when tracing is on and the ``otel`` extra is installed.

Three pieces:

- :func:`build_provider`: an SDK ``TracerProvider`` with the resource, the sampler and the exporter
  the settings ask for.
- :class:`SwitchingTracerProvider`: the process-wide provider registered with OpenTelemetry once. Its
  tracers delegate to whichever SDK provider ``init_tracing`` installed last, so tracing can be
  initialised again (new settings, tests) although OpenTelemetry lets the global be set only once.
- :class:`MirroringRuntimeContext`: wraps OpenTelemetry's runtime context so that while a span is the
  active one its ids are bound in :mod:`mainspring.context`, where logging (and ``inject``) read them.
  Attach and detach are the only moments the active span changes, so log calls pay nothing extra.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context, _RuntimeContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, Tracer
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

from mainspring.config import Settings
from mainspring.context import RequestContext
from mainspring.context import _current as _context_var

_NOOP_TRACER = trace.NoOpTracer()


def build_provider(settings: Settings, exporter: SpanExporter | None = None) -> TracerProvider:
    """Build the SDK provider: resource from the service settings, ratio sampler, one exporter.

    ``exporter`` (an ``InMemorySpanExporter`` in tests) replaces the configured one and exports each
    span as it ends.
    """
    tracing = settings.tracing
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": settings.version,
            "deployment.environment.name": settings.profile,
            "deployment.environment": settings.profile,
        }
    )
    # ParentBased: a caller's sampling decision (the traceparent flag) wins, so traces stay whole.
    sampler = ParentBased(TraceIdRatioBased(tracing.sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif tracing.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif tracing.exporter == "otlp":
        from mainspring._compat import require

        module = require(
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            extra="otel",
            feature="the OTLP span exporter",
        )
        otlp = module.OTLPSpanExporter(endpoint=tracing.otlp_endpoint, timeout=tracing.otlp_timeout)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider


class SwitchingTracerProvider(trace.TracerProvider):
    """A provider whose tracers follow the SDK provider installed last (a no-op one when none is)."""

    def __init__(self) -> None:
        self.current: TracerProvider | None = None
        #: Bumped on every switch, so tracers know their cached delegate is stale.
        self.generation = 0

    def switch(self, provider: TracerProvider | None) -> None:
        """Make ``provider`` the one every tracer delegates to (``None``: none, spans are no-ops)."""
        self.current = provider
        self.generation += 1

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> Tracer:
        """Return a tracer that delegates to the current SDK provider's tracer of the same scope."""
        return SwitchingTracer(
            self, instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )


class SwitchingTracer(trace.Tracer):
    """A tracer that delegates to the current provider's tracer, fetched again after each switch."""

    def __init__(
        self,
        owner: SwitchingTracerProvider,
        name: str,
        version: str | None,
        schema_url: str | None,
        attributes: types.Attributes,
    ) -> None:
        self._owner = owner
        self._scope = (name, version, schema_url, attributes)
        self._generation = -1
        self._delegate: Tracer = _NOOP_TRACER

    def _tracer(self) -> Tracer:
        owner = self._owner
        if self._generation != owner.generation:
            provider = owner.current
            self._delegate = _NOOP_TRACER if provider is None else provider.get_tracer(*self._scope)
            self._generation = owner.generation
        return self._delegate

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        """Start a span with the current provider (see ``opentelemetry.trace.Tracer.start_span``)."""
        return self._tracer().start_span(*args, **kwargs)

    @_agnosticcontextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[Span]:
        """Start a span and make it the current one for the block."""
        with self._tracer().start_as_current_span(*args, **kwargs) as span:
            yield span


def _span_ids(context: Context) -> tuple[str, str, str] | None:
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return (
        format(span_context.trace_id, "032x"),
        format(span_context.span_id, "016x"),
        format(span_context.trace_flags, "02x"),
    )


class _MirroredToken:
    """What ``attach`` hands out: the wrapped runtime's token and the mainspring context's, if bound."""

    __slots__ = ("inner", "mirrored")

    def __init__(self, inner: object, mirrored: contextvars.Token[RequestContext] | None) -> None:
        self.inner = inner
        self.mirrored = mirrored


class MirroringRuntimeContext(_RuntimeContext):
    """OpenTelemetry's runtime context, plus: the active span's ids bound in :mod:`mainspring.context`.

    A context without a valid span (baggage only, suppression flags) leaves the mainspring ids alone, so
    ids extracted from an incoming ``traceparent`` by the web runtime stay visible.
    """

    def __init__(self, inner: _RuntimeContext) -> None:
        self.inner = inner

    def attach(self, context: Context) -> Any:
        """Attach ``context`` and bind its span's ids; return a token for :meth:`detach`."""
        token = self.inner.attach(context)
        ids = _span_ids(context)
        mirrored = None
        if ids is not None:
            # The context variable itself rather than bind_context(): this runs on every span
            # activation, the values are well-formed hex by construction, and it halves the cost.
            trace_id, span_id, flags = ids
            current = _context_var.get()
            mirrored = _context_var.set(
                replace(current, trace_id=trace_id, span_id=span_id, trace_flags=flags)
            )
        return _MirroredToken(token, mirrored)

    def get_current(self) -> Context:
        """Return the current OpenTelemetry context."""
        return self.inner.get_current()

    def detach(self, token: Any) -> None:
        """Undo the matching :meth:`attach`: the previous ids and the previous context come back."""
        if not isinstance(token, _MirroredToken):
            # Attached before the wrapper was installed.
            self.inner.detach(token)
            return
        try:
            if token.mirrored is not None:
                _context_var.reset(token.mirrored)
        finally:
            self.inner.detach(cast(Any, token.inner))


def install_mirroring() -> None:
    """Wrap OpenTelemetry's runtime context with :class:`MirroringRuntimeContext` (idempotent).

    OpenTelemetry picks its runtime context once, at import, through an entry point; there is no
    public hook for "the active span changed", so the loaded one is wrapped in place.
    """
    runtime = otel_context._RUNTIME_CONTEXT
    if not isinstance(runtime, MirroringRuntimeContext):
        otel_context._RUNTIME_CONTEXT = MirroringRuntimeContext(runtime)
