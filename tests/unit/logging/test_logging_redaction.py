"""Redaction: secrets by key at any depth, card numbers and bearer tokens in text, and the fast path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.config import LoggingSettings
from mainspring.logging import MASK, configure_logging, get_logger
from mainspring.logging._redact import KeyMatcher, Redactor, luhn_valid, scrub_text
from mainspring.testing import capture_logs

Lines = Callable[[], list[dict[str, Any]]]
DEFAULT_KEYS = LoggingSettings().redact_keys

VALID_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]


def _luhn_complete(body: str) -> str:
    """Append the check digit that makes ``body`` Luhn-valid."""
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


def test_secret_keys_are_masked_at_any_depth_in_dicts_and_lists(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("svc").info(
        "login",
        user="ada",
        password="hunter2",
        request={
            "headers": {"Authorization": "Basic abc", "Accept": "json"},
            "items": [{"api_key": "k-1", "sku": "a"}, ("tuple", {"client_secret": "s"})],
        },
    )

    [record] = stdout_json()
    assert record["user"] == "ada"
    assert record["password"] == MASK
    assert record["request"]["headers"] == {"Authorization": MASK, "Accept": "json"}
    assert record["request"]["items"][0] == {"api_key": MASK, "sku": "a"}
    assert record["request"]["items"][1] == ["tuple", {"client_secret": MASK}]
    assert "hunter2" not in json.dumps(record)


def test_the_callers_containers_are_not_modified() -> None:
    payload = {"password": "hunter2", "nested": [{"token": "t"}]}
    with capture_logs() as logs:
        get_logger("svc").info("x", payload=payload)

    assert payload == {"password": "hunter2", "nested": [{"token": "t"}]}
    assert logs[0]["payload"] == {"password": MASK, "nested": [{"token": MASK}]}


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "Password",
        "db_password",
        "password_confirmation",
        "userPassword",
        "userpassword",
        "X-Api-Key",
        "apiKey",
        "accessToken",
        "REFRESH_TOKEN",
        "Set-Cookie",
        "HTTP_AUTHORIZATION",
        "stripe.client_secret",
        "secret_key",
        "token_type",
        "next_page_token",
    ],
)
def test_keys_naming_a_secret_match_case_insensitively_and_by_word(key: str) -> None:
    assert KeyMatcher(DEFAULT_KEYS)(key)


@pytest.mark.parametrize(
    "key",
    ["user", "passwords", "tokenizer", "max_tokens", "secretary", "cookies_enabled_count", "keys", 3, None],
)
def test_keys_that_only_resemble_a_secret_are_left_alone(key: object) -> None:
    assert not KeyMatcher(DEFAULT_KEYS)(key)


def test_custom_redact_keys_replace_the_defaults(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(redact_keys=["ssn"]))
    get_logger("svc").info("x", SSN="123-45-6789", customer_ssn="1", password="visible")

    [record] = stdout_json()
    assert record["SSN"] == MASK
    assert record["customer_ssn"] == MASK
    assert record["password"] == "visible"


def test_redaction_off_leaves_everything(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(redact=False))
    get_logger("svc").info("Bearer abc.def", password="hunter2", card="4111 1111 1111 1111")

    [record] = stdout_json()
    assert record["password"] == "hunter2"
    assert record["card"] == "4111 1111 1111 1111"
    assert record["event"] == "Bearer abc.def"


@pytest.mark.parametrize(
    "card", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"]
)
def test_luhn_valid_card_numbers_in_strings_are_masked(card: str) -> None:
    assert scrub_text(f"charged card {card} ok") == f"charged card {MASK} ok"


@pytest.mark.parametrize(
    "text",
    [
        "charged card 4111111111111112 ok",  # fails Luhn
        "order 123456789012 placed",  # 12 digits: too short
        "id 12345678901234567890123 too long",  # 23 digits: not a card
        "phone +44 20 7946 0958",
    ],
)
def test_numbers_that_are_not_card_numbers_are_left_alone(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi_jkl", f"Authorization: Bearer {MASK}"),
        ("bearer eyJhbGciOi.eyJzdWIi.sig== trailing", f"bearer {MASK} trailing"),
        ("BEARER token123", f"BEARER {MASK}"),
        ("the bearer of bad news", f"the bearer {MASK} bad news"),
    ],
)
def test_bearer_tokens_in_strings_are_masked(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


def test_patterns_apply_to_the_event_fields_and_nested_strings(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("svc").info(
        "paid with 4111 1111 1111 1111",
        header="Bearer abc123",
        nested={"notes": ["card 5555555555554444 declined"]},
    )

    [record] = stdout_json()
    assert record["event"] == f"paid with {MASK}"
    assert record["header"] == f"Bearer {MASK}"
    assert record["nested"]["notes"] == [f"card {MASK} declined"]


def test_patterns_can_be_turned_off_while_keys_stay_masked(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings(redact_patterns=False))
    get_logger("svc").info("card 4111111111111111", token="t")

    [record] = stdout_json()
    assert record["event"] == "card 4111111111111111"
    assert record["token"] == MASK


def test_interpolated_event_messages_are_scrubbed(stdout_json: Lines) -> None:
    configure_logging(LoggingSettings())
    get_logger("svc").info("got header %s", "Bearer xyz")

    [record] = stdout_json()
    assert record["event"] == f"got header Bearer {MASK}"


def test_stdlib_records_are_redacted_too(stdout_json: Lines) -> None:
    import logging

    configure_logging(LoggingSettings())
    logging.getLogger("httpx").info("sent %s", "Bearer abc", extra={"api_key": "k"})

    [record] = stdout_json()
    assert record["event"] == f"sent Bearer {MASK}"
    assert record["api_key"] == MASK


def test_self_referencing_containers_do_not_recurse_forever() -> None:
    loop: list[Any] = ["a"]
    loop.append(loop)
    redactor = Redactor(DEFAULT_KEYS, patterns=True)
    result = redactor.value({"loop": loop}, 0)
    assert json.dumps(result)  # encodable: the cycle was cut


def test_clean_values_come_back_as_the_same_objects() -> None:
    redactor = Redactor(DEFAULT_KEYS, patterns=True)
    value = {"a": [1, 2, {"b": "a plain sentence of text"}], "c": ("x", 2.5)}
    assert redactor.value(value, 0) is value


def test_file_and_stdout_output_agree_on_redaction(
    file_settings: Callable[..., LoggingSettings],
    log_path: Path,
    read_json: Callable[[Path], list[dict[str, Any]]],
) -> None:
    configure_logging(file_settings())
    get_logger("svc").info("x", secret="s", card="4111111111111111")
    configure_logging(LoggingSettings())  # closes the file

    [record] = read_json(log_path)
    assert record["secret"] == MASK
    assert record["card"] == MASK


# Property tests: the string patterns against generated text.

_card_bodies = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n).filter(lambda s: s[0] != "0")
)
_filler = st.text(alphabet=st.characters(blacklist_categories=("Nd",), max_codepoint=0x2FF), max_size=30)


@given(body=_card_bodies, before=_filler, after=_filler)
def test_any_luhn_valid_number_is_masked_wherever_it_sits(body: str, before: str, after: str) -> None:
    card = _luhn_complete(body)
    text = f"{before} {card} {after}"
    scrubbed = scrub_text(text)
    assert card not in scrubbed
    assert MASK in scrubbed


@given(body=_card_bodies, separator=st.sampled_from([" ", "-"]))
def test_grouped_card_numbers_are_masked(body: str, separator: str) -> None:
    card = _luhn_complete(body)
    grouped = separator.join(card[i : i + 4] for i in range(0, len(card), 4))
    assert scrub_text(f"card: {grouped}.") == f"card: {MASK}."


@given(body=_card_bodies)
def test_a_number_failing_luhn_is_never_masked(body: str) -> None:
    valid = _luhn_complete(body)
    wrong = valid[:-1] + str((int(valid[-1]) + 1) % 10)
    text = f"ref {wrong} end"
    assert scrub_text(text) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=200))
def test_text_without_digits_or_bearer_is_returned_unchanged(text: str) -> None:
    if "bearer" in text.lower():
        return
    assert scrub_text(text) is text


@given(
    token=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=1)
)
def test_any_bearer_token_is_masked(token: str) -> None:
    scrubbed = scrub_text(f"Authorization: Bearer {token}")
    assert scrubbed == f"Authorization: Bearer {MASK}"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(st.sampled_from(["a", "password", "b", "token"]), c, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_no_secret_key_survives_at_any_depth(value: Any) -> None:
    redacted = Redactor(DEFAULT_KEYS, patterns=False).value(value, 0)

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("password", "token"):
                    assert item == MASK
                else:
                    check(item)
        elif isinstance(node, list | tuple):
            for item in node:
                check(item)

    check(redacted)


def test_a_repeated_field_value_is_scrubbed_every_time() -> None:
    redactor = Redactor(["password"], patterns=True)
    leaked = "retry with Bearer abcdefghijklmnopqrstuvwxyz0123"
    clean = "/items/{item_id}"
    for _ in range(3):
        # Equal strings, new objects each time, as a real record would carry them.
        record: dict[str, Any] = {"event": "x", "note": "".join(leaked), "route": "".join(clean)}
        redactor.fields(record, 1)
        assert "abcdefghijklmnopqrstuvwxyz0123" not in record["note"]
        assert record["note"].endswith(MASK)
        assert record["route"] == clean
