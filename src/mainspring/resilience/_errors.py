"""The errors the resilience patterns raise, and the argument checks their constructors share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mainspring.errors import ServiceUnavailableError, ValidationError


class CircuitOpenError(ServiceUnavailableError):
    """A circuit breaker refused the call: the dependency behind it is failing (503 / UNAVAILABLE).

    ``retry_after`` is the number of seconds until the breaker lets a probe through again (0 when
    the probes are already running and only the permitted number may go). ``name`` is the breaker's.
    """

    code = "circuit_open"

    def __init__(
        self,
        message: str,
        *,
        name: str,
        retry_after: float,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details={"circuit": name, **(details or {})})
        self.name = name
        self.retry_after = max(0.0, retry_after)

    def _problem_extensions(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class BulkheadFullError(ServiceUnavailableError):
    """A bulkhead refused the call: all its slots are busy and its queue is full or waited out.

    A 503 rather than a 429: the limit protects this service's resources, it says nothing about the
    caller's rate, so a client should back off and retry like for any overloaded dependency.
    """

    code = "bulkhead_full"

    def __init__(
        self,
        message: str,
        *,
        name: str,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details={"bulkhead": name, **(details or {})})
        self.name = name


def invalid(owner: str, field: str, value: object, rule: str) -> ValidationError:
    """Build the :class:`ValidationError` for one bad constructor argument."""
    return ValidationError(
        f"{owner}: {field} must be {rule}, got {value!r}",
        errors=[{"loc": [field], "msg": f"must be {rule}", "input": repr(value)}],
    )


def check_seconds(owner: str, field: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float seconds, or raise :class:`ValidationError` if not finite and > 0."""
    rule = "a finite number of seconds >= 0" if allow_zero else "a finite number of seconds > 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(owner, field, value, rule)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise invalid(owner, field, value, rule)
    return seconds


def check_int(owner: str, field: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise :class:`ValidationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(owner, field, value, f"an integer >= {minimum}")
    return value


def check_exception_types(owner: str, field: str, value: object) -> tuple[type[BaseException], ...]:
    """Return ``value`` as a tuple of exception classes (one class is accepted too)."""
    items = (value,) if isinstance(value, type) else value
    if not isinstance(items, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in items
    ):
        raise invalid(owner, field, value, "an exception class or a tuple of exception classes")
    return items
