"""Redaction: masks secrets by key at any depth and, optionally, card numbers and bearer tokens in text.

Cost matters more than cleverness here, because the redactor sees every record and almost never finds
anything. So the common cases are settled before any real work: a key's verdict is computed once and
cached; ints, floats, bools and ``None`` are skipped on their type; strings shorter than a bearer
header skip the patterns; a string is searched for a card number only when it holds 13 digits at all,
and for a bearer token only when it holds the word. Containers are copied only when something inside
them changes, so a caller's dicts and lists are never modified.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

MASK = "**********"

#: How deep nested containers are followed; deeper values (or cycles) are replaced, not walked.
MAX_DEPTH = 16
TOO_DEEP = "[too deep to redact]"

# Keys and verdicts are cached; a service that logs unbounded distinct keys must not grow memory.
_KEY_CACHE_LIMIT = 4096
# Shortest text worth a pattern search: "Bearer x" is 8 characters, a card number 13.
_MIN_PATTERN_LEN = 8
# Field values up to this length keep their scrubbed form in a cache (scrubbing is a pure function).
_CACHED_VALUE_LEN = 128
_MIN_CARD_DIGITS = 13

_WORD_SPLIT_RE = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])")
_CARD_RE = re.compile(r"[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_BEARER_RE = re.compile(r"\b(bearer)(\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# Maps every byte to b"0" (a digit) or b"a" (anything else): counting digits becomes two C calls.
_DIGIT_TABLE = bytes(48 if 48 <= b <= 57 else 97 for b in range(256))
_SCALARS = frozenset({int, float, bool, type(None)})


def _words(key: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD_SPLIT_RE.split(key) if w)


def luhn_valid(digits: str) -> bool:
    """Return whether ``digits`` (ASCII digits only) passes the Luhn checksum."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    text = match.group()
    digits = text.replace(" ", "").replace("-", "")
    if luhn_valid(digits):
        return MASK
    return text


def _mask_bearer(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{MASK}"


def scrub_text(text: str) -> str:
    """Mask Luhn-valid card numbers and bearer tokens in ``text``; return ``text`` itself when clean."""
    if len(text) < _MIN_PATTERN_LEN:
        return text
    result = text
    if "bearer" in text.lower():
        result = _BEARER_RE.sub(_mask_bearer, result)
    if len(text) >= _MIN_CARD_DIGITS and (
        text.encode("utf-8", "surrogatepass").translate(_DIGIT_TABLE).count(48) >= _MIN_CARD_DIGITS
    ):
        result = _CARD_RE.sub(_mask_card, result)
    # re.sub builds a new string even when every match was left alone (invalid Luhn): keep the original.
    return text if result == text else result


class KeyMatcher:
    """Decides whether a key names a secret.

    A key matches a redact key when, ignoring case, either the key's words (split at ``_``, ``-``, ``.``,
    spaces and camelCase humps) contain the redact key's words as a run (``db_password``,
    ``password_confirmation``, ``X-Api-Key``, ``accessToken``), or the key with separators removed ends
    with the redact key likewise compacted (``userpassword``). ``passwords``, ``tokenizer`` and
    ``max_tokens`` do not match ``password``/``token``.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._word_keys = tuple({w for w in (_words(k) for k in keys) if w})
        self._compact_keys = tuple({"".join(w) for w in self._word_keys})
        #: Verdicts by key; read directly on the hot path, filled by calling the matcher.
        self.cache: dict[object, bool] = {}

    def __call__(self, key: object) -> bool:
        """Return whether ``key`` names a secret (cached per key)."""
        verdict = self.cache.get(key)
        if verdict is None:
            verdict = self._decide(key)
            if len(self.cache) >= _KEY_CACHE_LIMIT:
                self.cache.clear()
            self.cache[key] = verdict
        return verdict

    def _decide(self, key: object) -> bool:
        if not isinstance(key, str) or not self._word_keys:
            return False
        words = _words(key)
        compact = "".join(words)
        if compact.endswith(self._compact_keys):
            return True
        for target in self._word_keys:
            size = len(target)
            for start in range(len(words) - size + 1):
                if words[start : start + size] == target:
                    return True
        return False


class Redactor:
    """Applies the key rules and (optionally) the text patterns to event dicts and values."""

    def __init__(self, keys: Iterable[str], *, patterns: bool) -> None:
        self.is_secret = KeyMatcher(keys)
        self.patterns = patterns
        self._text: Callable[[str], str] = scrub_text if patterns else _same
        self._event_cache: dict[str, str] = {}
        # Scrubbed short field values: routes, methods, client addresses and the like repeat.
        self._value_cache: dict[str, str] = {}

    def text(self, value: str) -> str:
        """Scrub free text (messages, exception messages) with the patterns, if they are on."""
        return self._text(value)

    def event(self, value: str) -> str:
        """Scrub an event message; messages repeat, so the verdict is cached per message."""
        if not self.patterns:
            return value
        cached = self._event_cache.get(value)
        if cached is None:
            cached = self._text(value)
            if len(self._event_cache) >= _KEY_CACHE_LIMIT:
                self._event_cache.clear()
            self._event_cache[value] = cached
        return cached

    def fields(self, record: dict[str, Any], skip: int) -> None:
        """Redact ``record`` in place, leaving its first ``skip`` entries (our own fields) alone."""
        # Everything the loop touches is a local: attribute and global lookups cost more than the checks.
        verdicts = self.is_secret.cache
        text = self._text
        scalars = _SCALARS
        min_len = _MIN_PATTERN_LEN
        cache = self._value_cache
        changes: list[tuple[str, Any]] | None = None
        for key, value in islice(record.items(), skip, None):
            secret = verdicts.get(key)
            if secret is None:
                secret = self.is_secret(key)
            if secret:
                new: Any = MASK
            else:
                kind = type(value)
                if kind in scalars:
                    continue
                if kind is str:
                    size = len(value)
                    if size < min_len:
                        continue
                    new = cache.get(value)
                    if new is None:
                        new = text(value)
                        if size <= _CACHED_VALUE_LEN:
                            if len(cache) >= _KEY_CACHE_LIMIT:
                                cache.clear()
                            cache[value] = new
                    if new == value:  # clean (the cached string may be an equal, other object)
                        continue
                elif kind is dict:
                    new = self._mapping(value, 1)
                else:
                    new = self.value(value, 0)
            if new is not value:
                if changes is None:
                    changes = []
                changes.append((key, new))
        if changes is not None:
            record.update(changes)

    def value(self, value: Any, depth: int) -> Any:
        """Return ``value`` with secrets masked; the same object when nothing inside changed."""
        kind = type(value)
        if kind is str:
            return self._text(value)
        if kind in _SCALARS:
            return value
        if depth >= MAX_DEPTH:
            return TOO_DEEP if isinstance(value, dict | list | tuple | set | frozenset) else value
        if isinstance(value, dict):
            return self._mapping(value, depth + 1)
        if isinstance(value, list | tuple):
            return self._sequence(value, depth + 1)
        return value

    def _mapping(self, mapping: dict[Any, Any], depth: int) -> dict[Any, Any]:
        verdicts = self.is_secret.cache
        text = self._text
        scalars = _SCALARS
        min_len = _MIN_PATTERN_LEN
        copy: dict[Any, Any] | None = None
        for key, item in mapping.items():
            secret = verdicts.get(key)
            if secret is None:
                secret = self.is_secret(key)
            if secret:
                new: Any = MASK
            else:
                kind = type(item)
                if kind in scalars:
                    continue
                if kind is str:
                    if len(item) < min_len:
                        continue
                    new = text(item)
                else:
                    new = self.value(item, depth)
            if new is not item:
                if copy is None:
                    copy = dict(mapping)
                copy[key] = new
        return mapping if copy is None else copy

    def _sequence(self, items: list[Any] | tuple[Any, ...], depth: int) -> list[Any] | tuple[Any, ...]:
        copy: list[Any] | None = None
        for index, item in enumerate(items):
            kind = type(item)
            if kind in _SCALARS or (kind is str and len(item) < _MIN_PATTERN_LEN):
                continue
            new = self.value(item, depth)
            if new is not item:
                if copy is None:
                    copy = list(items)
                copy[index] = new
        if copy is None:
            return items
        return tuple(copy) if isinstance(items, tuple) else copy

    def fallback(self, obj: Any) -> Any:
        """Turn what JSON cannot encode natively into something it can, redacted on the way."""
        plain = plain_fallback(obj)
        if type(plain) is str:
            return self._text(plain)
        return self.value(plain, 1)


def _same(value: str) -> str:
    return value


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - an object whose __str__ raises still gets a line
        return f"<unprintable {type(obj).__name__}>"


def plain_fallback(obj: Any) -> Any:
    """JSON fallback without redaction: dataclasses and models as dicts, sets as lists, else ``str``."""
    try:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        dump = getattr(obj, "model_dump", None)
        if callable(dump):
            return dump(mode="json")
        if isinstance(obj, set | frozenset):
            return list(obj)
    except Exception:  # noqa: BLE001 - a broken object must not break logging; its str() still goes out
        return _safe_str(obj)
    return _safe_str(obj)
