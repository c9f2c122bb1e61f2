"""Structured logging: JSON lines or console output, context ids, redaction, rotation, non-blocking.

Call :func:`configure_logging` once at start-up with the service's settings, then log with
:func:`get_logger`::

    from mainspring.logging import configure_logging, get_logger

    configure_logging(settings)  # settings.logging is a LoggingSettings
    log = get_logger(__name__)
    log.info("order placed", order_id=42)

Standard-library loggers (uvicorn, sqlalchemy, asyncio, ...) come out in the same format and sink.
See ``docs/logging.md`` for formats, redaction rules, sinks and the non-blocking mode.
"""

from mainspring.logging._configure import (
    LoggingHandle,
    LoggingStats,
    configure_logging,
    shutdown_logging,
)
from mainspring.logging._logger import BoundLogger, get_logger
from mainspring.logging._redact import MASK

__all__ = [
    "MASK",
    "BoundLogger",
    "LoggingHandle",
    "LoggingStats",
    "configure_logging",
    "get_logger",
    "shutdown_logging",
]
