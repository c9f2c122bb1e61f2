"""``RetryPolicy``: how many times a failed message is redelivered, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mainspring.errors import ConfigError

__all__ = ["RetryPolicy"]

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


def _as_tuple(value: ExceptionTypes) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigError(f"RetryPolicy expects exception types, got {item!r}")
    return types


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delayed redelivery of failed messages.

    Attempt ``n`` (1-based) that fails with a retryable error is redelivered after
    ``min(max_delay, backoff * multiplier ** (n - 1))`` seconds, spread by ``jitter`` (a fraction: 0.2
    means anywhere from 80% to 120% of the delay). After ``max_attempts`` attempts the message goes to
    the dead-letter topic. An error is retryable when it is an instance of ``retry_on`` and not of
    ``dont_retry_on``; payload errors (undecodable data, failed validation, incompatible schema) are
    never retried.

    ``RetryPolicy(max_attempts=1)`` means no retry at all.
    """

    max_attempts: int = 5
    backoff: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    retry_on: ExceptionTypes = Exception
    dont_retry_on: ExceptionTypes = ()
    _retry_on: tuple[type[BaseException], ...] = field(init=False, repr=False, compare=False)
    _dont_retry_on: tuple[type[BaseException], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            problems.append(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.backoff < 0:
            problems.append(f"backoff must be >= 0 seconds, got {self.backoff!r}")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_delay < self.backoff:
            problems.append(f"max_delay ({self.max_delay!r}) must be >= backoff ({self.backoff!r})")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if problems:
            raise ConfigError("invalid RetryPolicy: " + "; ".join(problems))
        object.__setattr__(self, "_retry_on", _as_tuple(self.retry_on))
        object.__setattr__(self, "_dont_retry_on", _as_tuple(self.dont_retry_on))

    def is_retryable(self, error: BaseException) -> bool:
        """Return whether ``error`` may be retried at all (ignoring the attempt count)."""
        return isinstance(error, self._retry_on) and not isinstance(error, self._dont_retry_on)

    def delay(self, attempt: int) -> float:
        """Return the delay in seconds before redelivering a message whose attempt ``attempt`` failed."""
        try:
            base = min(self.max_delay, self.backoff * self.multiplier ** max(0, attempt - 1))
        except OverflowError:
            base = self.max_delay
        if self.jitter:
            base *= 1 + self.jitter * (2 * random.random() - 1)
        return max(0.0, min(base, self.max_delay))
