"""The JSON line: its shape, the context ids, fields, and stdlib records in the same format."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mainspring.config import LoggingSettings
from mainspring.context import Principal, bind_context
from mainspring.logging import configure_logging, get_logger

Lines = Callable[[], list[dict[str, Any]]]
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_json_line_has_timestamp_level_logger_event_then_fields(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("shop.orders").info("order placed", order_id=42, total=9.5)

    [record] = stdout_json()
    assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
    assert TIMESTAMP_RE.fullmatch(record["timestamp"]), record["timestamp"]
    assert record["level"] == "info"
    assert record["logger"] == "shop.orders"
    assert record["event"] == "order placed"
    assert record["order_id"] == 42
    assert record["total"] == 9.5


def test_every_level_is_lowercase(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(level="DEBUG"))
    log = get_logger("x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.warn("w2")
    log.error("e")
    log.critical("c")
    log.log("warning", "by name")
    log.log(logging.ERROR, "by number")

    levels = [r["level"] for r in stdout_json()]
    assert levels == ["debug", "info", "warning", "warning", "error", "critical", "warning", "error"]


def test_context_ids_appear_only_when_bound(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    log = get_logger("svc")
    log.info("outside")
    with bind_context(correlation_id="corr-1", request_id="req-1"):
        log.info("inside")
        with bind_context(
            causation_id="cause-1",
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id="b7ad6b7169203331",
            principal=Principal(id="user-7", tenant="acme"),
        ):
            log.info("deeper")

    outside, inside, deeper = stdout_json()
    ids = {"correlation_id", "request_id", "causation_id", "trace_id", "span_id", "principal_id", "tenant"}
    assert not ids & outside.keys()
    assert inside["correlation_id"] == "corr-1"
    assert inside["request_id"] == "req-1"
    assert not (ids - {"correlation_id", "request_id"}) & inside.keys()
    assert deeper["causation_id"] == "cause-1"
    assert deeper["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert deeper["span_id"] == "b7ad6b7169203331"
    assert deeper["principal_id"] == "user-7"
    assert deeper["tenant"] == "acme"


def test_bound_fields_are_carried_and_call_fields_override_them(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    log = get_logger("svc").bind(user="ada", attempt=1)
    log.info("first")
    log.bind(attempt=2).info("second", attempt=3)
    log.unbind("attempt").info("third")
    log.new(fresh=True).info("fourth")

    first, second, third, fourth = stdout_json()
    assert (first["user"], first["attempt"]) == ("ada", 1)
    assert second["attempt"] == 3
    assert third["user"] == "ada"
    assert "attempt" not in third
    assert fourth["fresh"] is True
    assert "user" not in fourth


def test_fields_cannot_overwrite_timestamp_level_or_logger(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("real").info("event", level="fake", logger="fake", timestamp="fake", other=1)

    [record] = stdout_json()
    assert record["level"] == "info"
    assert record["logger"] == "real"
    assert TIMESTAMP_RE.fullmatch(record["timestamp"])
    assert record["other"] == 1


def test_positional_arguments_are_interpolated_and_bad_ones_do_not_raise(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    log = get_logger("svc")
    log.info("took %d ms for %s", 12, "checkout")
    log.info("missing %s %s", "only-one")

    good, bad = stdout_json()
    assert good["event"] == "took 12 ms for checkout"
    assert bad["event"].startswith("missing %s %s")


def test_values_json_cannot_encode_natively_are_rendered_not_raised(stdout_json: Lines) -> None:
    @dataclasses.dataclass
    class Order:
        id: int
        note: str

    configure_logging(LoggingSettings())
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    get_logger("svc").info(
        "odd values",
        amount=Decimal("9.99"),
        path=Path("/tmp/x"),
        ident=ident,
        order=Order(1, "gift"),
        tags={"b"},
        numbers={1: "one"},
        huge=2**70,
    )

    [record] = stdout_json()
    assert record["event"] == "odd values"
    assert "logging_error" in record  # 2**70 does not fit JSON's integers in orjson: named, not lost
    assert record["amount"] == "9.99"


def test_values_json_can_encode_come_out_typed(stdout_json: Lines) -> None:
    @dataclasses.dataclass
    class Order:
        id: int
        note: str

    configure_logging(LoggingSettings())
    get_logger("svc").info(
        "values", amount=Decimal("9.99"), order=Order(1, "gift"), tags={"b"}, numbers={1: "one"}
    )

    [record] = stdout_json()
    assert record["amount"] == "9.99"
    assert record["order"] == {"id": 1, "note": "gift"}
    assert record["tags"] == ["b"]
    assert record["numbers"] == {"1": "one"}


def test_get_logger_without_name_uses_the_calling_module(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger().info("hello")

    [record] = stdout_json()
    assert record["logger"] == __name__


def test_stdlib_logger_comes_out_in_the_same_format(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    with bind_context(correlation_id="corr-9"):
        logging.getLogger("uvicorn.error").warning("worker %s restarted", 3, extra={"pid": 1234})

    [record] = stdout_json()
    assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
    assert TIMESTAMP_RE.fullmatch(record["timestamp"])
    assert record["level"] == "warning"
    assert record["logger"] == "uvicorn.error"
    assert record["event"] == "worker 3 restarted"
    assert record["correlation_id"] == "corr-9"
    assert record["pid"] == 1234
    assert "lineno" not in record
    assert "args" not in record


def test_structlog_get_logger_is_routed_through_mainspring(stdout_json: Lines) -> None:
    import structlog

    configure_logging(LoggingSettings())
    structlog.get_logger("via.structlog").info("routed", n=1)
    structlog.get_logger("via.structlog").bind(k="v").info("again")

    first, second = stdout_json()
    assert first["logger"] == "via.structlog"
    assert first["n"] == 1
    assert second["k"] == "v"


def test_stderr_sink_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(sink="stderr"))
    get_logger("svc").info("to stderr")

    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["event"] == "to stderr"


def test_before_configuration_loggers_write_json_to_stdout(stdout_json: Lines) -> None:
    get_logger("early").info("not configured yet", password="p")
    get_logger("early").debug("below the default INFO")

    [record] = stdout_json()
    assert record["event"] == "not configured yet"
    assert record["password"] == "**********"
