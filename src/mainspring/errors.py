"""The error hierarchy: every error mainspring raises to users derives from :class:`MainspringError`.

Each class fixes a stable ``code``, an HTTP status and a gRPC status, so the web and gRPC runtimes map
any of them to the wire without a lookup table of their own. ``to_problem()`` renders an RFC 9457
problem object.
"""

from __future__ import annotations

import enum
import http
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "PROBLEM_TYPE_PREFIX",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConfigProblem",
    "ConflictError",
    "DeadlineExceededError",
    "GrpcStatus",
    "InternalError",
    "MainspringError",
    "MissingDependencyError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "ValidationError",
    "problem_from_exception",
]

#: Prefix of the RFC 9457 ``type`` member; the error's ``code`` completes it.
PROBLEM_TYPE_PREFIX = "urn:mainspring:problem:"


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (``grpc.StatusCode`` without importing grpc)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class MainspringError(Exception):
    """Root of every error mainspring raises to its users.

    ``message`` says what was wrong and what to do about it; it must never contain a secret.
    ``code`` is a stable, machine-readable string (subclasses fix a default); ``details`` is a JSON-able
    mapping with specifics (field names, limits, ids) that travels in the problem object.
    """

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[GrpcStatus] = GrpcStatus.UNKNOWN
    #: Whether ``message`` may be shown to a client. Internal errors hide it behind a generic title.
    expose_message: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # An instance attribute shadows the class default for this error only.
            self.code = code  # type: ignore[misc]
        self.details: dict[str, Any] = dict(details) if details else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    @property
    def title(self) -> str:
        """The HTTP reason phrase of :attr:`http_status` (``"Not Found"``)."""
        try:
            return http.HTTPStatus(self.http_status).phrase
        except ValueError:
            return "Error"

    def to_problem(self, *, instance: str | None = None) -> dict[str, Any]:
        """Return an RFC 9457 problem object: ``type``, ``title``, ``status``, ``detail``, ``code``, ...

        Extension members: ``code`` always, ``details`` when there are any, and whatever a subclass adds
        (``retry_after`` for :class:`RateLimitedError`). ``instance`` identifies this occurrence, usually
        the request path.
        """
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.http_status,
            "detail": self.message if self.expose_message else self.title,
            "code": self.code,
        }
        if instance is not None:
            problem["instance"] = instance
        if self.details and self.expose_message:
            problem["details"] = self.details
        problem.update(self._problem_extensions())
        return problem

    def _problem_extensions(self) -> dict[str, Any]:
        return {}


class BadRequestError(MainspringError):
    """The request is malformed (400 / INVALID_ARGUMENT)."""

    code = "bad_request"
    http_status = 400
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class ValidationError(MainspringError):
    """Input failed validation (422 / INVALID_ARGUMENT).

    ``errors`` lists the individual problems, each a mapping with at least ``loc`` and ``msg``.
    """

    code = "validation_failed"
    http_status = 422
    grpc_status = GrpcStatus.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[Mapping[str, Any]] = (),
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]

    def _problem_extensions(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class AuthenticationError(MainspringError):
    """The caller is not authenticated, or its credentials were rejected (401 / UNAUTHENTICATED)."""

    code = "unauthenticated"
    http_status = 401
    grpc_status = GrpcStatus.UNAUTHENTICATED


class PermissionDeniedError(MainspringError):
    """The caller is authenticated but not allowed to do this (403 / PERMISSION_DENIED)."""

    code = "permission_denied"
    http_status = 403
    grpc_status = GrpcStatus.PERMISSION_DENIED


class NotFoundError(MainspringError):
    """The requested resource does not exist (404 / NOT_FOUND)."""

    code = "not_found"
    http_status = 404
    grpc_status = GrpcStatus.NOT_FOUND


class ConflictError(MainspringError):
    """The request conflicts with current state: a duplicate key, a stale version (409 / ALREADY_EXISTS)."""

    code = "conflict"
    http_status = 409
    grpc_status = GrpcStatus.ALREADY_EXISTS


class RateLimitedError(MainspringError):
    """Too many requests (429 / RESOURCE_EXHAUSTED); ``retry_after`` is in seconds."""

    code = "rate_limited"
    http_status = 429
    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after}")
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after

    def _problem_extensions(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class InternalError(MainspringError):
    """An unexpected failure inside the service (500 / INTERNAL); the message is not shown to clients."""

    code = "internal"
    http_status = 500
    grpc_status = GrpcStatus.INTERNAL
    expose_message = False


class ServiceUnavailableError(MainspringError):
    """A dependency is down or the service is overloaded; try again later (503 / UNAVAILABLE)."""

    code = "unavailable"
    http_status = 503
    grpc_status = GrpcStatus.UNAVAILABLE


class DeadlineExceededError(MainspringError):
    """An operation ran out of time (504 / DEADLINE_EXCEEDED)."""

    code = "deadline_exceeded"
    http_status = 504
    grpc_status = GrpcStatus.DEADLINE_EXCEEDED


class MissingDependencyError(MainspringError):
    """An optional dependency is not installed; the message names the extra to install."""

    code = "missing_dependency"
    http_status = 500
    grpc_status = GrpcStatus.FAILED_PRECONDITION
    expose_message = False


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One configuration problem: where (``path``), what (``value``, masked when secret), from where, why."""

    path: str
    reason: str
    value: str | None = None
    source: str | None = None

    def __str__(self) -> str:
        parts = [f"{self.path or '<root>'}: {self.reason}"]
        if self.value is not None:
            parts.append(f"value {self.value}")
        if self.source:
            parts.append(f"from {self.source}")
        return "; ".join(parts)


class ConfigError(MainspringError):
    """The configuration is invalid; ``problems`` holds every problem found, not only the first."""

    code = "config_invalid"
    http_status = 500
    grpc_status = GrpcStatus.FAILED_PRECONDITION
    expose_message = False

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[ConfigProblem] = (),
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, code=code, details=details)


def problem_from_exception(exc: BaseException, *, instance: str | None = None) -> dict[str, Any]:
    """Render any exception as a problem object; anything not a :class:`MainspringError` is a 500.

    The message of a foreign exception is never exposed: it may carry driver internals or secrets.
    """
    if isinstance(exc, MainspringError):
        return exc.to_problem(instance=instance)
    return InternalError("internal error").to_problem(instance=instance)
