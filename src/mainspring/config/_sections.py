"""Settings sections shared by every service; subsystems add their own sections in their issues."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: Keys whose values are masked in every log record (matched case-insensitively, at any depth).
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "authorization",
    "cookie",
    "set-cookie",
    "api_key",
    "apikey",
    "private_key",
    "client_secret",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LogFileSettings(_Section):
    """A log file with rotation: by size (``max_bytes``) or by time (``when``), keeping ``backups`` files."""

    path: Path
    rotation: Literal["size", "time", "none"] = "size"
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="rotate above this size")
    when: Literal["S", "M", "H", "D", "midnight", "W0", "W1", "W2", "W3", "W4", "W5", "W6"] = "midnight"
    backups: int = Field(default=7, ge=0, description="rotated files to keep (retention)")


class LoggingSettings(_Section):
    """How :func:`mainspring.logging.configure_logging` sets up logging."""

    level: LogLevel = "INFO"
    format: Literal["json", "console"] = "json"
    sink: Literal["stdout", "stderr", "file"] = "stdout"
    file: LogFileSettings | None = None
    non_blocking: bool = Field(
        default=False,
        description="render in the caller, write from a background thread; flushed on shutdown",
    )
    queue_size: int = Field(default=10_000, gt=0, description="records buffered in non-blocking mode")
    levels: dict[str, LogLevel] = Field(
        default_factory=dict, description="per-logger levels, e.g. {'sqlalchemy.engine': 'WARNING'}"
    )
    redact: bool = True
    redact_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_KEYS))
    redact_patterns: bool = Field(
        default=True, description="mask Luhn-valid card numbers and bearer tokens inside strings"
    )

    @field_validator("levels", mode="before")
    @classmethod
    def _upper_levels(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: v.upper() if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _file_sink_needs_file(self) -> Self:
        if self.sink == "file" and self.file is None:
            raise ValueError("sink 'file' needs a 'file' section; add logging.file.path")
        return self
