"""Exceptions: structured in JSON, plain in the console, never with local variables, scrubbed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from mainspring.config import LoggingSettings
from mainspring.logging import MASK, configure_logging, get_logger

Lines = Callable[[], list[dict[str, Any]]]
LOCAL_SECRET = "s3cr3t-local-value-8472"


class PaymentError(Exception):
    """A domain error raised in these tests."""


def _fail_with_a_secret_in_a_local() -> None:
    api_credential = LOCAL_SECRET + "-x"
    assert api_credential
    raise PaymentError("charge declined")


def test_exception_is_a_structured_field(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        _fail_with_a_secret_in_a_local()
    except PaymentError:
        get_logger("pay").exception("charge failed", order_id=5)

    [record] = stdout_json()
    assert record["level"] == "error"
    assert record["order_id"] == 5
    exc = record["exception"]
    assert exc["type"] == f"{__name__}.PaymentError"
    assert exc["message"] == "charge declined"
    assert isinstance(exc["frames"], list)
    last = exc["frames"][-1]
    assert last["function"] == "_fail_with_a_secret_in_a_local"
    assert last["file"].endswith("test_logging_exceptions.py")
    assert isinstance(last["line"], int)
    assert set(last) == {"file", "line", "function"}


def test_local_variables_never_appear_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings())
    try:
        _fail_with_a_secret_in_a_local()
    except PaymentError:
        get_logger("pay").exception("charge failed")

    out = capsys.readouterr().out
    assert "charge declined" in out
    assert LOCAL_SECRET not in out
    assert "api_credential" not in out


def test_local_variables_never_appear_in_console_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(format="console"))
    try:
        _fail_with_a_secret_in_a_local()
    except PaymentError:
        get_logger("pay").exception("charge failed")

    out = capsys.readouterr().out
    assert "PaymentError: charge declined" in out
    assert "Traceback" in out
    assert LOCAL_SECRET not in out


def test_exception_messages_are_scrubbed(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        raise ValueError("upstream refused Bearer abc.def for card 4111 1111 1111 1111")
    except ValueError:
        get_logger("svc").exception("call failed")

    [record] = stdout_json()
    assert record["exception"]["message"] == f"upstream refused Bearer {MASK} for card {MASK}"


def test_console_traceback_is_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(format="console"))
    try:
        raise ValueError("token Bearer abc.def leaked")
    except ValueError:
        get_logger("svc").exception("call failed")

    out = capsys.readouterr().out
    assert "abc.def" not in out
    assert f"Bearer {MASK}" in out


def test_chained_exceptions_keep_their_cause(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        try:
            {}["missing"]
        except KeyError as inner:
            raise RuntimeError("lookup failed") from inner
    except RuntimeError as exc:
        get_logger("svc").error("failed", exc_info=exc)

    [record] = stdout_json()
    assert record["exception"]["type"] == "RuntimeError"
    assert record["exception"]["cause"]["type"] == "KeyError"


def test_implicit_context_and_notes_are_recorded(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        try:
            raise OSError("disk")
        except OSError:
            error = ValueError("while handling")
            error.add_note("retry 3 of 3")
            raise error  # noqa: B904 - the implicit context is what this test is about
    except ValueError:
        get_logger("svc").exception("failed")

    [record] = stdout_json()
    assert record["exception"]["notes"] == ["retry 3 of 3"]
    assert record["exception"]["context"]["type"] == "OSError"


def test_exception_groups_list_their_members(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        raise ExceptionGroup("several", [ValueError("a"), TypeError("b")])
    except ExceptionGroup:
        get_logger("svc").exception("failed")

    [record] = stdout_json()
    assert [e["type"] for e in record["exception"]["exceptions"]] == ["ValueError", "TypeError"]


def test_exc_info_outside_an_except_block_adds_nothing(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("svc").error("no exception here", exc_info=True)

    [record] = stdout_json()
    assert "exception" not in record
    assert "exc_info" not in record


def test_stdlib_exceptions_are_structured_the_same_way(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    try:
        _fail_with_a_secret_in_a_local()
    except PaymentError:
        logging.getLogger("sqlalchemy.pool").exception("connection reset")

    [record] = stdout_json()
    assert record["logger"] == "sqlalchemy.pool"
    assert record["exception"]["message"] == "charge declined"
    assert record["exception"]["frames"][-1]["function"] == "_fail_with_a_secret_in_a_local"


def test_an_exception_whose_str_raises_still_gets_logged(stdout_json: Lines) -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    configure_logging(LoggingSettings())
    try:
        raise Broken
    except Broken:
        get_logger("svc").exception("odd")

    [record] = stdout_json()
    assert record["exception"]["message"] == "<unprintable Broken>"
