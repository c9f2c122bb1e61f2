"""Resilience patterns: ``timeout``, ``retry``, ``CircuitBreaker`` and ``Bulkhead``.

::

    from mainspring.resilience import CircuitBreaker, CircuitOpenError, retry, timeout

    breaker = CircuitBreaker("payments", failure_rate_threshold=0.5, open_duration=30)

    @retry(max_attempts=3, dont_retry_on=CircuitOpenError)
    @breaker
    @timeout(2.0)
    async def charge(order_id: int) -> None: ...

Each works on its own; stacked, the outer one sees what the inner ones raise. Errors are
:class:`~mainspring.errors.MainspringError` subclasses (``DeadlineExceededError``,
:class:`CircuitOpenError`, :class:`BulkheadFullError`). See ``docs/resilience.md``.
"""

from mainspring.resilience._breaker import (
    CallPermit,
    CircuitBreaker,
    CircuitBreakerStats,
    CircuitState,
    StateChange,
)
from mainspring.resilience._bulkhead import Bulkhead, BulkheadStats
from mainspring.resilience._errors import BulkheadFullError, CircuitOpenError
from mainspring.resilience._retry import Retry, RetryOn, retry
from mainspring.resilience._timeout import Timeout, timeout

__all__ = [
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStats",
    "CallPermit",
    "CircuitBreaker",
    "CircuitBreakerStats",
    "CircuitOpenError",
    "CircuitState",
    "Retry",
    "RetryOn",
    "StateChange",
    "Timeout",
    "retry",
    "timeout",
]
