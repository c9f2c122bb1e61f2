"""``${VAR}`` expansion: the rules, the escape, and properties that hold for any text."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mainspring.config._interpolate import InterpolationError, escape, expand
from mainspring.config._yaml import read_yaml

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
texts = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=40)
plain_texts = texts.filter(lambda t: "$" not in t)


def test_variable_is_replaced_by_its_value() -> None:
    assert (
        expand("postgresql://${HOST}:5432/db", {"HOST": "db.internal"}) == "postgresql://db.internal:5432/db"
    )


def test_default_is_used_when_variable_is_unset_or_empty() -> None:
    assert expand("${LEVEL:-INFO}", {}) == "INFO"
    assert expand("${LEVEL:-INFO}", {"LEVEL": ""}) == "INFO"
    assert expand("${LEVEL:-INFO}", {"LEVEL": "DEBUG"}) == "DEBUG"


def test_empty_default_gives_empty_string() -> None:
    assert expand("a${X:-}b", {}) == "ab"


def test_set_but_empty_variable_without_default_expands_to_empty() -> None:
    assert expand("[${X}]", {"X": ""}) == "[]"


def test_double_dollar_brace_is_a_literal() -> None:
    assert expand("price: $${AMOUNT}", {"AMOUNT": "3"}) == "price: ${AMOUNT}"


def test_lone_dollars_are_literal() -> None:
    assert expand("$5 and $$ and $HOME", {"HOME": "/root"}) == "$5 and $$ and $HOME"


def test_unset_variable_without_default_names_every_missing_variable() -> None:
    with pytest.raises(InterpolationError) as info:
        expand("${A}-${B:-b}-${C}", {})
    assert info.value.missing == ["A", "C"]
    assert "A is not set" in str(info.value)
    assert "C is not set" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${}", "not a valid reference"),
        ("${1X}", "not a valid reference"),
        ("${A B}", "not a valid reference"),
        ("${OPEN", "unterminated"),
        ("${A:-${B}}", "nested references"),
    ],
)
def test_malformed_reference_is_an_error(text: str, fragment: str) -> None:
    with pytest.raises(InterpolationError, match=fragment):
        expand(text, {"A": "a", "B": "b"})


@given(plain_texts)
def test_text_without_dollar_is_unchanged(text: str) -> None:
    assert expand(text, {}) == text


@given(st.text(max_size=60))
def test_escaped_text_expands_back_to_itself(text: str) -> None:
    assert expand(escape(text), {"A": "x"}) == text


@given(names, st.text(max_size=40), plain_texts, plain_texts)
def test_substituted_value_is_inserted_verbatim_and_never_re_expanded(
    name: str, value: str, before: str, after: str
) -> None:
    env = {name: value, "OTHER": "boom"}
    expected = before + value + after if value else before + after
    assert expand(before + "${" + name + "}" + after, env) == expected


@given(names, plain_texts.filter(lambda t: "}" not in t), plain_texts)
def test_default_applies_exactly_when_the_variable_is_unset(name: str, default: str, text: str) -> None:
    template = "${" + name + ":-" + default + "}" + text
    assert expand(template, {}) == default + text
    assert expand(template, {name: "set"}) == "set" + text


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_any_string_survives_a_yaml_file_when_escaped(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "base.yaml"
        path.write_text(yaml.safe_dump({"service_name": escape(text)}), encoding="utf-8")
        result = read_yaml(path, "base.yaml", {})
    assert result.problems == []
    assert result.layer is not None
    assert result.layer.data == {"service_name": text}
