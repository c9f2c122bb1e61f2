"""Context variables, binding and propagation through carriers."""

from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring import context
from mainspring.context import (
    Principal,
    bind_context,
    extract,
    format_traceparent,
    get_context,
    inject,
    new_correlation_id,
    parse_traceparent,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def test_bind_context_sets_values_and_restores_previous_on_exit() -> None:
    assert get_context().correlation_id is None
    with bind_context(correlation_id="outer"):
        with bind_context(correlation_id="inner", request_id="r1"):
            assert get_context().correlation_id == "inner"
            assert get_context().request_id == "r1"
        assert get_context().correlation_id == "outer"
        assert get_context().request_id is None
    assert get_context().correlation_id is None


def test_bind_context_restores_even_when_block_raises() -> None:
    with pytest.raises(RuntimeError), bind_context(correlation_id="c1"):
        raise RuntimeError("boom")
    assert get_context().correlation_id is None


def test_bind_context_rejects_unknown_field_and_wrong_types() -> None:
    with pytest.raises(TypeError, match="unknown context field"), bind_context(corelation_id="typo"):
        pass
    with pytest.raises(TypeError, match="must be a str"), bind_context(request_id=42):
        pass
    with pytest.raises(TypeError, match="Principal"), bind_context(principal="alice"):
        pass


def test_log_fields_hold_only_set_ids_and_principal() -> None:
    principal = Principal(id="u1", tenant="acme", roles=frozenset({"admin"}))
    with bind_context(correlation_id="c1", principal=principal):
        fields = dict(get_context().log_fields)
    assert fields == {"correlation_id": "c1", "principal_id": "u1", "tenant": "acme"}


async def test_context_is_isolated_between_concurrent_tasks() -> None:
    seen: dict[str, str | None] = {}

    async def worker(name: str) -> None:
        with bind_context(correlation_id=name):
            await asyncio.sleep(0.01)
            seen[name] = get_context().correlation_id

    await asyncio.gather(*(worker(f"task-{i}") for i in range(20)))
    assert seen == {f"task-{i}": f"task-{i}" for i in range(20)}


def test_new_correlation_ids_are_unique_hex() -> None:
    ids = {new_correlation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and set(i) <= set(string.hexdigits.lower()) for i in ids)


def test_extract_reads_valid_headers_case_insensitively() -> None:
    carrier = {
        "x-correlation-id": "corr-1",
        "X-REQUEST-ID": "req-1",
        "Traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01",
        "tracestate": "vendor=abc, other=1",
    }
    values = extract(carrier)
    assert values == {
        "correlation_id": "corr-1",
        "request_id": "req-1",
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "trace_flags": "01",
        "tracestate": "vendor=abc,other=1",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        f"00-{TRACE_ID}-{SPAN_ID}",  # missing flags
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # forbidden version
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # uppercase hex
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # short trace id
    ],
)
def test_malformed_traceparent_is_ignored_never_raises(bad: str) -> None:
    values = extract({"traceparent": bad, "tracestate": "a=b"})
    assert "trace_id" not in values
    assert "tracestate" not in values
    assert parse_traceparent(bad) is None


def test_future_traceparent_version_with_extra_fields_is_accepted() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01-future") == (TRACE_ID, SPAN_ID, "01")


@pytest.mark.parametrize("bad", ["", "has space", "x" * 200, 'quote"inside', "new\nline", "ünicode"])
def test_malformed_correlation_id_is_replaced_by_fresh_one(bad: str) -> None:
    values = extract({"X-Correlation-ID": bad, "X-Request-ID": bad})
    assert values["correlation_id"] != bad
    assert len(values["correlation_id"]) == 32
    assert values["request_id"] != bad


def test_missing_headers_give_fresh_ids() -> None:
    a, b = extract({}), extract({})
    assert a["correlation_id"] != b["correlation_id"]
    assert set(a) == {"correlation_id", "request_id"}


def test_malformed_tracestate_is_dropped_but_traceparent_kept() -> None:
    values = extract({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "tracestate": "no equals sign"})
    assert values["trace_id"] == TRACE_ID
    assert "tracestate" not in values


def test_inject_writes_current_context_and_round_trips_through_extract() -> None:
    carrier: dict[str, str] = {}
    with bind_context(
        correlation_id="c1", request_id="r1", causation_id="m1", trace_id=TRACE_ID, span_id=SPAN_ID
    ):
        inject(carrier)
    assert carrier["X-Correlation-ID"] == "c1"
    assert carrier["traceparent"] == format_traceparent(TRACE_ID, SPAN_ID)
    assert extract(carrier) == {
        "correlation_id": "c1",
        "request_id": "r1",
        "causation_id": "m1",
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "trace_flags": "01",
    }


def test_inject_without_context_writes_nothing() -> None:
    carrier: dict[str, str] = {}
    inject(carrier)
    assert carrier == {}


@given(st.text(max_size=80))
def test_extract_never_raises_on_arbitrary_header_values(value: str) -> None:
    values = extract(
        {
            "X-Correlation-ID": value,
            "X-Request-ID": value,
            "X-Causation-ID": value,
            "traceparent": value,
            "tracestate": value,
        }
    )
    assert context._ID_RE.fullmatch(values["correlation_id"])


@given(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)
def test_traceparent_format_and_parse_round_trip(trace_id: str, span_id: str) -> None:
    parsed = parse_traceparent(format_traceparent(trace_id, span_id))
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        assert parsed is None
    else:
        assert parsed == (trace_id, span_id, "01")


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next three ids and leave at once
        os.write(write, "".join(new_correlation_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    parent = "".join(new_correlation_id() for _ in range(3))
    assert len(child) == 96
    assert child != parent


def test_with_principal_keeps_every_other_field() -> None:
    from dataclasses import fields, replace

    from mainspring.context import Principal, RequestContext

    values = {f.name: f"{f.name}-1" for f in fields(RequestContext) if f.init and f.name != "principal"}
    context = RequestContext(**values)
    alice = Principal("alice", tenant="t1")
    assert context.with_principal(alice) == replace(context, principal=alice)
    assert context.with_principal(alice).log_fields == replace(context, principal=alice).log_fields
    assert context.with_principal(alice).with_principal(None) == context
