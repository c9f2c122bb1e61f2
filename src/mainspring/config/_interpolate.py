"""``${VAR}`` and ``${VAR:-default}`` expansion in YAML string values; ``$${`` writes a literal ``${``.

The rules are deliberately small, so they are easy to predict:

- ``${NAME}`` is replaced by the value of ``NAME``; unset is an error that names the variable.
- ``${NAME:-default}`` uses ``default`` when ``NAME`` is unset *or empty* (as in a POSIX shell).
- ``$${`` is a literal ``${``; every other ``$`` is literal.
- A substituted value is never expanded again, and the default is taken literally up to the first ``}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: One alternation scanned left to right, so an escape is consumed before it can start a reference.
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    """One string had references that could not be expanded; ``reasons`` says why, one line each."""

    def __init__(self, reasons: list[str], missing: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        #: Names of variables that were unset and had no default, in order of appearance.
        self.missing = missing


def escape(text: str) -> str:
    """Return ``text`` written so that :func:`expand` gives it back unchanged."""
    return text.replace("${", "$${")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand every reference in ``text`` from ``env``; raise :class:`InterpolationError` listing faults."""
    if "$" not in text:
        return text
    reasons: list[str] = []
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        body = match.group(1)
        if body is None:
            reasons.append("unterminated '${': close it with '}' or write '$${' for a literal '${'")
            return token
        name, sep, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            reasons.append(
                f"'${{{body}}}' is not a valid reference: write ${{NAME}} or ${{NAME:-default}}, "
                "NAME made of letters, digits and '_'"
            )
            return token
        if "${" in default:
            reasons.append(f"'${{{body}}}': nested references in a default are not supported")
            return token
        value = env.get(name)
        if value:
            return value
        if sep:
            return default
        if value is None:
            missing.append(name)
            reasons.append(
                f"environment variable {name} is not set and has no default; "
                f"set it or write ${{{name}:-default}}"
            )
            return token
        return value

    result = _TOKEN.sub(replace, text)
    if reasons:
        raise InterpolationError(reasons, missing)
    return result
