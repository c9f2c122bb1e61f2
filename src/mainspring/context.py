"""Request-scoped context carried in :mod:`contextvars`: correlation, request, causation and trace ids
and the principal.

Logging, audit, database audit columns and outgoing messages and HTTP calls read it; incoming HTTP,
gRPC and messages set it with :func:`extract` and :func:`bind_context`. Propagation through carriers
(HTTP headers, message headers, gRPC metadata) is :func:`inject` / :func:`extract`.

The whole context is one immutable :class:`RequestContext` in one context variable, so a reader (the
logger, on every record) pays one lookup, and binding is copy-on-write.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mainspring._ids import random_hex128

__all__ = [
    "CAUSATION_ID_HEADER",
    "CORRELATION_ID_HEADER",
    "REQUEST_ID_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "Principal",
    "RequestContext",
    "bind_context",
    "extract",
    "format_traceparent",
    "get_context",
    "inject",
    "new_correlation_id",
    "new_request_id",
    "parse_traceparent",
    "reset_context",
    "set_context",
]

CORRELATION_ID_HEADER = "X-Correlation-ID"
REQUEST_ID_HEADER = "X-Request-ID"
CAUSATION_ID_HEADER = "X-Causation-ID"
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

# Ids accepted from outside: printable, no spaces or quotes, bounded, so that a client cannot inject
# log lines or huge values through a header.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE_MEMBER_RE = re.compile(
    r"(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a user or a service, with its tenant, roles and scopes."""

    id: str
    kind: str = "user"
    tenant: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    auth_method: str | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """An immutable snapshot of the current context; unset values are ``None``."""

    correlation_id: str | None = None
    request_id: str | None = None
    causation_id: str | None = None
    principal: Principal | None = None
    trace_id: str | None = None
    span_id: str | None = None
    trace_flags: str | None = None
    tracestate: str | None = None
    #: The ids as ``(name, value)`` pairs, unset ones left out: what a log record carries.
    log_fields: tuple[tuple[str, str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Spelled out rather than a loop over getattr: a context is built once or twice per request.
        items: list[tuple[str, str]] = []
        if self.correlation_id is not None:
            items.append(("correlation_id", self.correlation_id))
        if self.request_id is not None:
            items.append(("request_id", self.request_id))
        if self.causation_id is not None:
            items.append(("causation_id", self.causation_id))
        if self.trace_id is not None:
            items.append(("trace_id", self.trace_id))
        if self.span_id is not None:
            items.append(("span_id", self.span_id))
        if self.principal is not None:
            items.append(("principal_id", self.principal.id))
            if self.principal.tenant is not None:
                items.append(("tenant", self.principal.tenant))
        object.__setattr__(self, "log_fields", tuple(items))

    def with_principal(self, principal: Principal | None) -> RequestContext:
        """Return a copy with ``principal`` set (what :func:`dataclasses.replace` does, faster)."""
        return RequestContext(
            correlation_id=self.correlation_id,
            request_id=self.request_id,
            causation_id=self.causation_id,
            principal=principal,
            trace_id=self.trace_id,
            span_id=self.span_id,
            trace_flags=self.trace_flags,
            tracestate=self.tracestate,
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the set values by name (the principal as a :class:`Principal`)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.init and getattr(self, f.name) is not None
        }


_EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "mainspring_context", default=_EMPTY
)
_BINDABLE = frozenset(f.name for f in fields(RequestContext) if f.init)


def get_context() -> RequestContext:
    """Return the current context (an immutable snapshot; cheap, no copy)."""
    return _current.get()


@contextmanager
def bind_context(**values: Any) -> Iterator[RequestContext]:
    """Bind context values for the duration of a ``with`` block; the previous values come back on exit.

    Accepts the fields of :class:`RequestContext` (``correlation_id=...``, ``principal=...``); passing
    ``None`` clears a value. An unknown name raises :class:`TypeError` at once.
    """
    unknown = values.keys() - _BINDABLE
    if unknown:
        raise TypeError(
            f"bind_context() got unknown context field(s) {sorted(unknown)}; known: {sorted(_BINDABLE)}"
        )
    principal = values.get("principal")
    if principal is not None and not isinstance(principal, Principal):
        raise TypeError(f"principal must be a mainspring.context.Principal, got {type(principal).__name__}")
    for name, value in values.items():
        if name != "principal" and value is not None and not isinstance(value, str):
            raise TypeError(f"context field {name!r} must be a str or None, got {type(value).__name__}")
    new = replace(_current.get(), **values)
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)


def set_context(context: RequestContext) -> contextvars.Token[RequestContext]:
    """Make ``context`` the current context and return the token that undoes it.

    The low-level form of :func:`bind_context` for hot paths that build a whole context at once
    (a message handler's); always pair it with :func:`reset_context` in a ``finally``.
    """
    if not isinstance(context, RequestContext):
        raise TypeError(f"set_context() needs a RequestContext, got {type(context).__name__}")
    return _current.set(context)


def reset_context(token: contextvars.Token[RequestContext]) -> None:
    """Restore the context that was current before :func:`set_context` returned ``token``."""
    _current.reset(token)


def new_correlation_id() -> str:
    """Return a fresh correlation id (32 lowercase hex digits, 128 random bits)."""
    return random_hex128()


def new_request_id() -> str:
    """Return a fresh request id (32 lowercase hex digits, 128 random bits)."""
    return random_hex128()


def _valid_id(value: str | None) -> str | None:
    if value is not None and _ID_RE.fullmatch(value):
        return value
    return None


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """Parse a W3C ``traceparent`` into ``(trace_id, parent_span_id, flags)``; ``None`` when malformed.

    Follows the Trace Context rules: version ``ff`` is invalid, all-zero ids are invalid, version ``00``
    has exactly four fields, a later version may append fields after a dash.
    """
    if value is None:
        return None
    value = value.strip()
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    if version == "00" and rest:
        return None
    return trace_id, span_id, flags


def format_traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    """Build a version-00 ``traceparent`` value."""
    return f"00-{trace_id}-{span_id}-{flags}"


def _valid_tracestate(value: str | None) -> str | None:
    if value is None or len(value) > 512:
        return None
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > 32:
        return None
    if not all(_TRACESTATE_MEMBER_RE.fullmatch(m) for m in members):
        return None
    return ",".join(members)


def _lookup(carrier: Mapping[str, str], name: str) -> str | None:
    value = carrier.get(name)
    if value is None:
        value = carrier.get(name.lower())
    if value is None:
        lowered = name.lower()
        for key, candidate in carrier.items():
            if key.lower() == lowered:
                return candidate
    return value


def extract(carrier: Mapping[str, str]) -> dict[str, str]:
    """Read propagated context from ``carrier`` and return values ready for :func:`bind_context`.

    Header names match case-insensitively. A missing or malformed correlation or request id is replaced
    by a fresh one; a malformed ``traceparent`` or ``tracestate`` is dropped. Never raises on content.
    """
    result: dict[str, str] = {
        "correlation_id": _valid_id(_lookup(carrier, CORRELATION_ID_HEADER)) or new_correlation_id(),
        "request_id": _valid_id(_lookup(carrier, REQUEST_ID_HEADER)) or new_request_id(),
    }
    causation = _valid_id(_lookup(carrier, CAUSATION_ID_HEADER))
    if causation is not None:
        result["causation_id"] = causation
    parsed = parse_traceparent(_lookup(carrier, TRACEPARENT_HEADER))
    if parsed is not None:
        result["trace_id"], result["span_id"], result["trace_flags"] = parsed
        state = _valid_tracestate(_lookup(carrier, TRACESTATE_HEADER))
        if state is not None:
            result["tracestate"] = state
    return result


def inject(carrier: MutableMapping[str, str], context: RequestContext | None = None) -> None:
    """Write the current context (or ``context``) into ``carrier`` as propagation headers.

    Sets ``X-Correlation-ID``, ``X-Request-ID`` and ``X-Causation-ID`` when known, and
    ``traceparent``/``tracestate`` when a trace is active. A span id is made up when the context has a
    trace id but no span id, so the value stays valid.
    """
    ctx = context if context is not None else _current.get()
    if ctx.correlation_id is not None:
        carrier[CORRELATION_ID_HEADER] = ctx.correlation_id
    if ctx.request_id is not None:
        carrier[REQUEST_ID_HEADER] = ctx.request_id
    if ctx.causation_id is not None:
        carrier[CAUSATION_ID_HEADER] = ctx.causation_id
    if ctx.trace_id is not None:
        span_id = ctx.span_id or secrets.token_hex(8)
        carrier[TRACEPARENT_HEADER] = format_traceparent(ctx.trace_id, span_id, ctx.trace_flags or "01")
        if ctx.tracestate:
            carrier[TRACESTATE_HEADER] = ctx.tracestate
