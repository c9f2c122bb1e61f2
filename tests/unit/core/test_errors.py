"""The error hierarchy: codes, statuses and RFC 9457 problem objects."""

from __future__ import annotations

import pytest

from mainspring.errors import (
    PROBLEM_TYPE_PREFIX,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConfigProblem,
    ConflictError,
    DeadlineExceededError,
    GrpcStatus,
    InternalError,
    MainspringError,
    MissingDependencyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServiceUnavailableError,
    ValidationError,
    problem_from_exception,
)

EXPECTED = [
    (BadRequestError, 400, "INVALID_ARGUMENT", "bad_request"),
    (ValidationError, 422, "INVALID_ARGUMENT", "validation_failed"),
    (AuthenticationError, 401, "UNAUTHENTICATED", "unauthenticated"),
    (PermissionDeniedError, 403, "PERMISSION_DENIED", "permission_denied"),
    (NotFoundError, 404, "NOT_FOUND", "not_found"),
    (ConflictError, 409, "ALREADY_EXISTS", "conflict"),
    (InternalError, 500, "INTERNAL", "internal"),
    (ServiceUnavailableError, 503, "UNAVAILABLE", "unavailable"),
    (DeadlineExceededError, 504, "DEADLINE_EXCEEDED", "deadline_exceeded"),
    (MissingDependencyError, 500, "FAILED_PRECONDITION", "missing_dependency"),
    (ConfigError, 500, "FAILED_PRECONDITION", "config_invalid"),
]


@pytest.mark.parametrize(("cls", "status", "grpc_name", "code"), EXPECTED)
def test_each_error_fixes_http_status_grpc_status_and_code(
    cls: type[MainspringError], status: int, grpc_name: str, code: str
) -> None:
    err = cls("something went wrong")
    assert isinstance(err, MainspringError)
    assert err.http_status == status
    assert err.grpc_status.name == grpc_name
    assert err.code == code
    assert err.to_problem()["status"] == status


def test_rate_limited_error_carries_retry_after_in_problem() -> None:
    err = RateLimitedError("slow down: 10 requests per second allowed", retry_after=1.5)
    problem = err.to_problem()
    assert err.http_status == 429
    assert err.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED
    assert problem["retry_after"] == 1.5


def test_rate_limited_error_refuses_negative_retry_after() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RateLimitedError("x", retry_after=-1)


def test_problem_object_has_rfc9457_members_and_extensions() -> None:
    err = NotFoundError("order 42 not found", details={"id": 42})
    problem = err.to_problem(instance="/orders/42")
    assert problem == {
        "type": PROBLEM_TYPE_PREFIX + "not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "order 42 not found",
        "code": "not_found",
        "instance": "/orders/42",
        "details": {"id": 42},
    }


def test_custom_code_overrides_class_default_for_one_instance_only() -> None:
    err = ConflictError("order 42 changed since you read it", code="order.stale")
    assert err.code == "order.stale"
    assert ConflictError.code == "conflict"
    assert err.to_problem()["type"].endswith("order.stale")


def test_validation_error_lists_field_errors() -> None:
    err = ValidationError("invalid order", errors=[{"loc": ["qty"], "msg": "must be > 0"}])
    assert err.to_problem()["errors"] == [{"loc": ["qty"], "msg": "must be > 0"}]


def test_internal_errors_hide_message_and_details_from_clients() -> None:
    err = InternalError("db password wrong for user admin", details={"dsn": "postgres://..."})
    problem = err.to_problem()
    assert "password" not in str(problem)
    assert problem["detail"] == "Internal Server Error"
    assert "details" not in problem


def test_foreign_exception_becomes_generic_500_problem() -> None:
    problem = problem_from_exception(RuntimeError("secret=hunter2"))
    assert problem["status"] == 500
    assert "hunter2" not in str(problem)


def test_problem_from_mainspring_error_keeps_its_own_shape() -> None:
    problem = problem_from_exception(PermissionDeniedError("orders:delete required"), instance="/x")
    assert problem["status"] == 403
    assert problem["instance"] == "/x"


def test_config_error_lists_every_problem_in_its_message() -> None:
    err = ConfigError(
        "2 configuration problems",
        problems=[
            ConfigProblem(path="logging.level", reason="not a level", value="'LOUD'", source="base.yaml:3"),
            ConfigProblem(path="secret_key", reason="too short", value="**********", source="env X"),
        ],
    )
    text = str(err)
    assert "logging.level: not a level; value 'LOUD'; from base.yaml:3" in text
    assert "secret_key: too short" in text
    assert len(err.problems) == 2
