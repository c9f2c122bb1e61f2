"""Keeping secrets out of output, and the built-in rules the ``prod`` profile enforces.

Masking is used by error messages and by ``mainspring config show``; the production rules are called by
:meth:`mainspring.config.Settings.production_problems`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pydantic import SecretBytes, SecretStr

from mainspring.errors import ConfigProblem

#: What every masked value is replaced by (the same string pydantic prints for a secret).
MASK = "**********"

#: Placeholder secret shipped as the default; obviously not for production.
DEV_SECRET_KEY = "dev-insecure-change-me"

#: Minimum length of a production ``secret_key``.
MIN_SECRET_KEY_LENGTH = 32

# Substrings of a setting name that mark its value as secret. Broad on purpose: masking a harmless value
# costs little, printing a password costs a rotation.
_SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private_key",
    "api_key",
    "apikey",
    "access_key",
    "authorization",
    "cookie",
)
_PLACEHOLDER_PARTS = ("changeme", "change-me", "change_me", "insecure", "placeholder", "example", "dummy")
_DEV_PREFIX = re.compile(r"^(dev|test|local)([-_.:]|$)", re.IGNORECASE)
# scheme://user:password@host -> keep the user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)(?=@)")
_MAX_VALUE_CHARS = 120


def looks_secret(path: Sequence[str | int] | str) -> bool:
    """Say whether any part of a setting path names something secret (``database.password``)."""
    parts = path.split(".") if isinstance(path, str) else [str(p) for p in path]
    for part in parts:
        lowered = part.lower().replace("-", "_")
        if any(marker in lowered for marker in _SECRET_NAME_PARTS):
            return True
    return False


def mask_url_password(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in ``text`` with the mask."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def describe_value(value: object, *, secret: bool) -> str | None:
    """Render an offending value for a problem report, masked when ``secret``; ``None`` for sections.

    Mappings are left out: they are whole sections whose own problems are reported one by one, and they
    may hold secrets under names we cannot see from here.
    """
    if value is None:
        return "null"
    if secret or isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, dict):
        return None
    if isinstance(value, list | tuple):
        if any(isinstance(item, dict | list | tuple) for item in value):
            return None
        text = "[" + ", ".join(repr(item) for item in value) + "]"
    else:
        text = repr(value)
    text = mask_url_password(text)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def secret_key_problems(secret_key: str, *, path: str = "secret_key") -> list[ConfigProblem]:
    """Return why ``secret_key`` is unfit for production: a placeholder, a dev value, too short, too plain."""
    problems: list[ConfigProblem] = []
    lowered = secret_key.lower()
    if secret_key == DEV_SECRET_KEY or any(part in lowered for part in _PLACEHOLDER_PARTS):
        problems.append(
            ConfigProblem(
                path,
                "is a placeholder; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
                MASK,
            )
        )
    elif _DEV_PREFIX.match(secret_key):
        problems.append(ConfigProblem(path, "looks like a development value; use a generated secret", MASK))
    if len(secret_key) < MIN_SECRET_KEY_LENGTH:
        problems.append(
            ConfigProblem(
                path,
                f"is {len(secret_key)} characters; production needs at least {MIN_SECRET_KEY_LENGTH}",
                MASK,
            )
        )
    elif len(set(secret_key)) < 8:
        problems.append(
            ConfigProblem(path, "uses fewer than 8 distinct characters; use a generated secret", MASK)
        )
    return problems


def debug_level_problems(level: str, levels: Iterable[tuple[str, str]]) -> list[ConfigProblem]:
    """Return a problem for a root ``DEBUG`` log level and for every logger set to ``DEBUG``."""
    problems: list[ConfigProblem] = []
    if level == "DEBUG":
        problems.append(
            ConfigProblem("logging.level", "DEBUG logging is not allowed in production; use INFO", "'DEBUG'")
        )
    for logger, logger_level in levels:
        if logger_level == "DEBUG":
            problems.append(
                ConfigProblem(
                    f"logging.levels.{logger}",
                    "DEBUG logging is not allowed in production; use INFO or remove the entry",
                    "'DEBUG'",
                )
            )
    return problems
