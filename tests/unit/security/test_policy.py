"""PasswordPolicy: every rule, all failures reported at once, the bundled list and a custom one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from mainspring.errors import ConfigError, ValidationError
from mainspring.security import CHARACTER_CLASSES, PasswordPolicy, load_common_passwords


def _types(policy: PasswordPolicy, password: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        policy.check(password, **kwargs)
    assert info.value.code == "password_policy"
    assert all(e["loc"] == ["password"] for e in info.value.errors)
    return [e["type"] for e in info.value.errors]


def test_a_long_uncommon_password_passes() -> None:
    policy = PasswordPolicy()
    policy.check("violet kettle under the stairs")
    assert policy.violations("violet kettle under the stairs") == []


def test_too_short_password_is_rejected_with_the_minimum_in_the_message() -> None:
    policy = PasswordPolicy(min_length=12)
    assert _types(policy, "short pass") == ["too_short"]
    assert policy.violations("short pass") == ["must be at least 12 characters (got 10)"]


def test_too_long_password_is_rejected() -> None:
    assert _types(PasswordPolicy(max_length=20), "x" * 21 + "unusual") == ["too_long"]


def test_length_boundaries_are_inclusive() -> None:
    policy = PasswordPolicy(min_length=12, max_length=14, forbid_common=False)
    policy.check("a" * 12)
    policy.check("a" * 14)


def test_length_is_counted_after_nfkc_normalisation() -> None:
    policy = PasswordPolicy(min_length=3, max_length=4, forbid_common=False)
    # U+FB03 (the "ffi" ligature) is one code point that NFKC turns into three.
    assert policy.violations("\ufb03") == []
    assert _types(policy, "\ufb03\ufb03") == ["too_long"]


def test_common_password_is_rejected_case_insensitively() -> None:
    policy = PasswordPolicy(min_length=8)
    assert _types(policy, "Password123") == ["common"]
    assert _types(policy, "QWERTYUIOP") == ["common"]


def test_common_check_can_be_disabled() -> None:
    PasswordPolicy(min_length=8, forbid_common=False).check("password123")


def test_extra_common_words_are_rejected() -> None:
    policy = PasswordPolicy(min_length=8, extra_common=["MainspringRocks"])
    assert _types(policy, "mainspringrocks") == ["common"]


def test_all_failures_are_reported_at_once() -> None:
    policy = PasswordPolicy(min_length=12, require_classes=("upper", "digit", "symbol"))
    assert _types(policy, "password") == [
        "too_short",
        "common",
        "missing_upper",
        "missing_digit",
        "missing_symbol",
    ]


@pytest.mark.parametrize(
    ("cls", "failing", "passing"),
    [
        ("lower", "ABCDEFGHIJKL", "ABCDEFGHIJKl"),
        ("upper", "abcdefghijkl", "abcdefghijkL"),
        ("digit", "abcdefghijkl", "abcdefghijk7"),
        ("symbol", "abcdefghijkl", "abcdefghijk!"),
    ],
)
def test_each_required_class_is_checked(cls: str, failing: str, passing: str) -> None:
    policy = PasswordPolicy(require_classes=(cls,), forbid_common=False)
    assert _types(policy, failing) == [f"missing_{cls}"]
    policy.check(passing)


def test_non_ascii_letters_count_for_their_class() -> None:
    PasswordPolicy(require_classes=("upper", "lower"), forbid_common=False).check("\u00c9t\u00e9 chaud ici")


def test_password_containing_the_user_name_is_rejected() -> None:
    policy = PasswordPolicy()
    assert _types(policy, "my name is Alexander ok", user_inputs=["alexander"]) == ["contains_user_input"]


def test_password_containing_the_email_local_part_is_rejected() -> None:
    policy = PasswordPolicy()
    assert _types(policy, "bobsmith-forever-2026", user_inputs=["BobSmith@example.com"]) == [
        "contains_user_input"
    ]


def test_very_short_user_inputs_are_ignored() -> None:
    PasswordPolicy().check("violet kettle under the jo stairs", user_inputs=["jo"])


def test_violations_accepts_user_inputs_too() -> None:
    assert PasswordPolicy().violations("violet alexander kettle", user_inputs=["Alexander"]) == [
        "must not contain your user name, email or name"
    ]


def test_non_str_password_is_a_validation_error() -> None:
    assert _types(PasswordPolicy(), 12345678901234) == ["type_error"]


def test_error_message_never_contains_the_password() -> None:
    with pytest.raises(ValidationError) as info:
        PasswordPolicy().check("hunter2")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.to_problem())


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"min_length": 0}, "min_length"),
        ({"max_length": 0}, "max_length"),
        ({"min_length": 20, "max_length": 10}, "max_length"),
        ({"require_classes": ("emoji",)}, "require_classes"),
        ({"require_classes": "upper"}, "require_classes"),
        ({"min_length": True}, "min_length"),
    ],
)
def test_invalid_settings_are_a_config_error(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        PasswordPolicy(**kwargs)
    assert [p.path for p in info.value.problems] == [path]


def test_custom_common_passwords_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "big-list.txt"
    path.write_text("Zebra-Horizon-Quartz\n\n  another one  \n", encoding="utf-8")
    policy = PasswordPolicy(common_passwords_path=path)
    assert _types(policy, "zebra-horizon-quartz") == ["common"]
    # The bundled list is replaced, not merged.
    policy.check("password1234")


def test_missing_common_passwords_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PasswordPolicy(common_passwords_path=tmp_path / "absent.txt")
    assert info.value.problems[0].path == "common_passwords_path"


def test_bundled_list_has_several_hundred_lowercase_entries() -> None:
    common = load_common_passwords()
    assert len(common) >= 500
    assert {"123456", "password", "qwerty", "letmein", "iloveyou"} <= common
    text = resources.files("mainspring.security").joinpath("data/common-passwords.txt").read_text("utf-8")
    lines = text.splitlines()
    assert lines == [line.strip().lower() for line in lines]
    assert len(lines) == len(set(lines))


def test_character_classes_are_the_documented_ones() -> None:
    assert frozenset({"lower", "upper", "digit", "symbol"}) == CHARACTER_CLASSES


def test_repr_lists_the_rules() -> None:
    assert "min_length=12" in repr(PasswordPolicy())
