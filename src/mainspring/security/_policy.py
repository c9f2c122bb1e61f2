"""Password policy: length bounds, a list of common passwords, optional character classes.

The defaults follow NIST SP 800-63B: a long minimum length, a generous maximum, a block-list of common
passwords and of the user's own data, and no composition rules unless a service asks for them.
Every rule is checked and every failure reported at once, so a sign-up form shows them together.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Final

from mainspring.errors import ConfigError, ConfigProblem, ValidationError

__all__ = ["CHARACTER_CLASSES", "PasswordPolicy", "load_common_passwords"]

_CLASS_TESTS: Final[dict[str, tuple[str, Callable[[str], bool]]]] = {
    "lower": ("a lowercase letter", str.islower),
    "upper": ("an uppercase letter", str.isupper),
    "digit": ("a digit", str.isdigit),
    "symbol": ("a symbol or space", lambda ch: not ch.isalnum()),
}
#: Names accepted in ``require_classes``.
CHARACTER_CLASSES: Final = frozenset(_CLASS_TESTS)

# A user input shorter than this (an initial, "jo") would forbid too many good passwords.
_MIN_USER_INPUT_CHARS: Final = 4


@functools.cache
def _load(path: Path | None) -> frozenset[str]:
    if path is None:
        text = resources.files("mainspring.security").joinpath("data/common-passwords.txt").read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    return frozenset(
        unicodedata.normalize("NFKC", line.strip()).casefold() for line in text.splitlines() if line.strip()
    )


def load_common_passwords(path: str | Path | None = None) -> frozenset[str]:
    """Return a common-password list, one password a line, casefolded (cached per path).

    ``None`` is the bundled list of several hundred entries. Raises :class:`ConfigError` when the
    file cannot be read.
    """
    resolved = None if path is None else Path(path)
    try:
        return _load(resolved)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "cannot read the common-passwords file",
            problems=[ConfigProblem("common_passwords_path", f"{type(exc).__name__}: {exc}", str(path))],
        ) from exc


class PasswordPolicy:
    """Rules a new password must satisfy; :meth:`check` reports every rule it breaks.

    Length is counted in characters after NFKC normalisation (what :class:`PasswordHasher` hashes).
    ``forbid_common`` rejects passwords on the bundled list, or on the list at
    ``common_passwords_path`` (one a line) when given; ``extra_common`` adds service-specific words
    (the product name). ``require_classes`` picks from ``lower``, ``upper``, ``digit``, ``symbol``.
    ``user_inputs`` passed to :meth:`check` (user name, email) are refused inside the password.
    """

    def __init__(
        self,
        *,
        min_length: int = 12,
        max_length: int = 128,
        forbid_common: bool = True,
        require_classes: Sequence[str] = (),
        common_passwords_path: str | Path | None = None,
        extra_common: Iterable[str] = (),
    ) -> None:
        problems: list[ConfigProblem] = []
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
            problems.append(ConfigProblem("min_length", "must be an integer >= 1", str(min_length)))
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            problems.append(ConfigProblem("max_length", "must be an integer >= 1", str(max_length)))
        elif isinstance(min_length, int) and max_length < min_length:
            problems.append(
                ConfigProblem("max_length", f"must be >= min_length ({min_length})", str(max_length))
            )
        if isinstance(require_classes, str):
            problems.append(
                ConfigProblem(
                    "require_classes", "must be a sequence of class names, not a str", require_classes
                )
            )
        else:
            unknown = sorted(set(require_classes) - CHARACTER_CLASSES)
            if unknown:
                problems.append(
                    ConfigProblem(
                        "require_classes",
                        f"unknown class(es) {unknown}; known: {sorted(CHARACTER_CLASSES)}",
                    )
                )
        if problems:
            raise ConfigError("invalid password policy", problems=problems)
        self.min_length = min_length
        self.max_length = max_length
        self.forbid_common = forbid_common
        self.require_classes: tuple[str, ...] = tuple(dict.fromkeys(require_classes))
        self._common: frozenset[str] = frozenset()
        if forbid_common:
            # Loaded now so that a missing file fails at start-up, not at the first sign-up.
            extra = frozenset(unicodedata.normalize("NFKC", w).casefold() for w in extra_common)
            self._common = load_common_passwords(common_passwords_path) | extra

    def __repr__(self) -> str:
        return (
            f"PasswordPolicy(min_length={self.min_length}, max_length={self.max_length}, "
            f"forbid_common={self.forbid_common}, require_classes={self.require_classes!r})"
        )

    def _failures(self, password: object, user_inputs: Iterable[str]) -> list[dict[str, str]]:
        if not isinstance(password, str):
            return [{"type": "type_error", "msg": f"password must be a str, got {type(password).__name__}"}]
        normalized = unicodedata.normalize("NFKC", password)
        failures: list[dict[str, str]] = []
        length = len(normalized)
        if length < self.min_length:
            failures.append(
                {"type": "too_short", "msg": f"must be at least {self.min_length} characters (got {length})"}
            )
        if length > self.max_length:
            failures.append(
                {"type": "too_long", "msg": f"must be at most {self.max_length} characters (got {length})"}
            )
        folded = normalized.casefold()
        if self.forbid_common and folded in self._common:
            failures.append({"type": "common", "msg": "is one of the most common passwords; choose another"})
        for name in self.require_classes:
            label, test = _CLASS_TESTS[name]
            if not any(test(ch) for ch in normalized):
                failures.append({"type": f"missing_{name}", "msg": f"must contain {label}"})
        for raw in user_inputs:
            value = unicodedata.normalize("NFKC", raw).casefold().strip()
            # An email's local part is what people reuse ("alice" of alice@example.com).
            candidates = {value, value.partition("@")[0]}
            if any(len(c) >= _MIN_USER_INPUT_CHARS and c in folded for c in candidates):
                failures.append(
                    {"type": "contains_user_input", "msg": "must not contain your user name, email or name"}
                )
                break
        return failures

    def violations(self, password: str, *, user_inputs: Iterable[str] = ()) -> list[str]:
        """Return a message for every rule ``password`` breaks; empty when it is acceptable."""
        return [f["msg"] for f in self._failures(password, user_inputs)]

    def check(self, password: str, *, user_inputs: Iterable[str] = ()) -> None:
        """Raise :class:`ValidationError` listing every rule ``password`` breaks; return when it is fine.

        Each entry of ``errors`` has ``loc`` (``["password"]``), ``msg`` and ``type`` (``too_short``,
        ``too_long``, ``common``, ``missing_<class>``, ``contains_user_input``). The password itself
        is never part of the error.
        """
        failures = self._failures(password, user_inputs)
        if failures:
            raise ValidationError(
                "password rejected: " + "; ".join(f["msg"] for f in failures),
                code="password_policy",
                errors=[{"loc": ["password"], **f} for f in failures],
            )
