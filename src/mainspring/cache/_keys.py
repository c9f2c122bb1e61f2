"""Cache keys that are the same in every process: the key space of a cache and the decorator key builder.

Nothing here uses ``hash()``: its value changes with ``PYTHONHASHSEED`` from one process to the next,
and cache keys are shared between processes (Redis) and across restarts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import inspect
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from mainspring.errors import ConfigError, ConfigProblem, ValidationError

__all__ = ["DEFAULT_MAX_KEY_LENGTH", "KeySpace", "canonical", "function_key", "function_name"]

#: Longest key (or tag) kept as it is; longer ones are shortened with sha256.
DEFAULT_MAX_KEY_LENGTH = 250
_DIGEST_CHARS = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _invalid(field: str, message: str, value: object) -> ValidationError:
    return ValidationError(
        message,
        errors=[{"loc": [field], "msg": message, "input": repr(value)[:80]}],
        details={"field": field},
    )


class KeySpace:
    """Builds the stored keys of one cache: ``{namespace}:{schema_version}:{key}`` and friends.

    Tag versions live at ``{namespace}:__tag__:{tag}`` and distributed leases at
    ``{namespace}:__lease__:{key}``: outside the schema version (instances of two versions share tags)
    and impossible to reach from an entry key, since a version must start with a letter or digit.
    A key longer than ``max_key_length`` keeps its first ``max_key_length - 64`` characters followed by
    ``#`` and the sha256 of the whole key: one character longer than any key kept as it is, so the two
    kinds never collide, and ``clear(prefix)`` still finds it by a prefix of up to that many characters.
    """

    __slots__ = (
        "_entry_prefix",
        "_keep",
        "_lease_prefix",
        "_tag_prefix",
        "max_key_length",
        "namespace",
        "version",
    )

    def __init__(self, namespace: str, version: str, max_key_length: int = DEFAULT_MAX_KEY_LENGTH) -> None:
        """Check the parts; ``ConfigError`` listing every bad one."""
        problems = [
            ConfigProblem(
                f"cache.{field}", "use letters, digits, '_', '.', '-' (starting alphanumeric)", repr(v)
            )
            for field, v in (("namespace", namespace), ("schema_version", version))
            if not isinstance(v, str) or not _NAME.match(v)
        ]
        if isinstance(max_key_length, bool) or not isinstance(max_key_length, int) or max_key_length < 80:
            problems.append(
                ConfigProblem("cache.max_key_length", "must be an integer >= 80", repr(max_key_length))
            )
        if problems:
            raise ConfigError("invalid cache key space", problems=problems)
        self.namespace = namespace
        self.version = version
        self.max_key_length = max_key_length
        self._keep = max_key_length - _DIGEST_CHARS
        self._entry_prefix = f"{namespace}:{version}:"
        self._tag_prefix = f"{namespace}:__tag__:"
        self._lease_prefix = f"{namespace}:__lease__:"

    @property
    def entry_prefix(self) -> str:
        """The prefix of every entry key: ``{namespace}:{schema_version}:``."""
        return self._entry_prefix

    def shorten(self, key: str) -> str:
        """Return ``key`` itself if short enough, else its head, ``#`` and its sha256 (hex)."""
        if len(key) <= self.max_key_length:
            return key
        return f"{key[: self._keep]}#{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"

    def check(self, key: object, what: str = "key") -> str:
        """Return ``key`` if it is a non-empty string, else raise :class:`ValidationError`."""
        if not isinstance(key, str) or not key:
            raise _invalid(what, f"a cache {what} must be a non-empty string, got {key!r}"[:200], key)
        return key

    def entry(self, key: str) -> str:
        """Return the stored key of entry ``key``."""
        if type(key) is str and key and len(key) <= self.max_key_length:  # every read: no calls
            return self._entry_prefix + key
        return self._entry_prefix + self.shorten(self.check(key))

    def tag(self, tag: str) -> str:
        """Return the stored key of the version of ``tag``."""
        return self._tag_prefix + self.shorten(self.check(tag, "tag"))

    def lease(self, key: str) -> str:
        """Return the key of the distributed lease that guards loading entry ``key``."""
        return self._lease_prefix + self.shorten(self.check(key))

    def prefix(self, prefix: str) -> str:
        """Return the stored-key prefix matching every entry whose key starts with ``prefix``."""
        if not isinstance(prefix, str):
            raise _invalid("prefix", f"a cache key prefix must be a string, got {prefix!r}"[:200], prefix)
        return self._entry_prefix + prefix[: self._keep]


# --- canonical arguments ------------------------------------------------------------------------------


def canonical(value: Any) -> str:
    """Return a string that identifies ``value`` the same way in every process.

    Injective over the supported types: type tags keep ``1``, ``1.0``, ``True`` and ``"1"`` apart,
    strings carry their length, dicts and sets are sorted by the canonical form of their items.
    Supported: None, bool, int, float, str, bytes, tuple, list, dict, set, frozenset, Decimal, UUID,
    date, time, datetime, timedelta, Enum members, dataclass instances, pydantic models, and any object
    with a ``__cache_key__()`` method returning a supported value. Anything else raises
    :class:`ValidationError` (pass ``key=`` to the decorator instead).
    """
    return _canonical(value, 0)


def _canonical(value: Any, depth: int) -> str:
    if depth > 32:
        raise _invalid("args", "cache key arguments are nested more than 32 levels deep", value)
    kind = type(value)
    if value is None:
        return "N"
    if kind is bool:
        return "T" if value else "F"
    if kind is int:
        return f"i{value}"
    if kind is str:
        return f"s{len(value)}:{value}"
    if kind is float:
        return f"f{value!r}"
    if kind is bytes:
        return f"b{len(value)}:{value.hex()}"
    inner = depth + 1
    if kind is tuple or kind is list:
        return ("t[" if kind is tuple else "l[") + ",".join(_canonical(v, inner) for v in value) + "]"
    if kind is dict:
        items = sorted(f"{_canonical(k, inner)}={_canonical(v, inner)}" for k, v in value.items())
        return "d{" + ",".join(items) + "}"
    if kind is set or kind is frozenset:
        return ("S{" if kind is set else "Z{") + ",".join(sorted(_canonical(v, inner) for v in value)) + "}"
    hook = getattr(value, "__cache_key__", None)
    if callable(hook):
        return f"k{_qualname(kind)}({_canonical(hook(), inner)})"
    if isinstance(value, enum.Enum):
        return f"e{_qualname(kind)}.{value.name}"
    if isinstance(value, bool | int | str | float | bytes | tuple | list | dict | set | frozenset):
        # A subclass of a builtin (an IntEnum is handled above): the class matters, the content too.
        base = next(
            b
            for b in (bool, int, str, float, bytes, tuple, list, dict, set, frozenset)
            if isinstance(value, b)
        )
        return f"x{_qualname(kind)}({_canonical(cast(Any, base)(value), inner)})"
    if isinstance(value, decimal.Decimal):
        return f"D{value.normalize()}" if value.is_finite() else f"D{value}"
    if isinstance(value, uuid.UUID):
        return f"u{value.hex}"
    if isinstance(value, dt.datetime):
        return f"dt{value.isoformat()}"
    if isinstance(value, dt.date):
        return f"dd{value.isoformat()}"
    if isinstance(value, dt.time):
        return f"tm{value.isoformat()}"
    if isinstance(value, dt.timedelta):
        return f"td{value.days},{value.seconds},{value.microseconds}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(
            f"{f.name}={_canonical(getattr(value, f.name), inner)}" for f in dataclasses.fields(value)
        )
        return f"c{_qualname(kind)}({fields})"
    dump = getattr(value, "model_dump", None)
    if callable(dump) and hasattr(kind, "model_fields"):
        return f"m{_qualname(kind)}({_canonical(dump(mode='python'), inner)})"
    raise _invalid(
        "args",
        f"cannot build a cache key from a {_qualname(kind)}: give it a __cache_key__() method, or pass "
        "key='...' (a template such as 'user:{user_id}') or key=callable to the decorator",
        value,
    )


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def function_name(func: Callable[..., Any]) -> str:
    """Return ``module.qualname`` of ``func`` (unwrapping decorators), the head of its default keys."""
    target = inspect.unwrap(func)
    return f"{target.__module__}.{target.__qualname__}"


def function_key(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    skip: Iterable[str] = ("self", "cls"),
    signature: inspect.Signature | None = None,
) -> str:
    """Return the default cache key of the call ``func(*args, **kwargs)``: name and canonical arguments.

    Arguments are bound to the signature with defaults applied, so ``f(1)``, ``f(x=1)`` and ``f(1, y=2)``
    with ``y=2`` the default give one key. Parameters named in ``skip`` (``self``, ``cls``) are left out:
    a method's cached result is shared by every instance unless the key says otherwise.
    """
    sig = signature or inspect.signature(func)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise _invalid("args", f"cannot bind the arguments of {function_name(func)}: {exc}", args) from exc
    bound.apply_defaults()
    skipped = set(skip)
    parts = [
        f"{name}={_canonical(value, 1)}" for name, value in bound.arguments.items() if name not in skipped
    ]
    return f"{function_name(func)}({','.join(parts)})"
