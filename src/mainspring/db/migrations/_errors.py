"""The error raised when a migration command cannot do what was asked."""

from __future__ import annotations

from mainspring.errors import GrpcStatus, MainspringError

__all__ = ["MigrationError"]


class MigrationError(MainspringError):
    """A migration command failed: no migrations folder, an unknown revision, a failing revision script.

    The message names what was wrong and the command that fixes it. A database that cannot be reached
    raises :class:`~mainspring.errors.ServiceUnavailableError` instead.
    """

    code = "migration_failed"
    http_status = 500
    grpc_status = GrpcStatus.FAILED_PRECONDITION
