"""Rate-limit values: the :class:`Limit` policy, its parser, the :class:`Decision` and the HTTP headers.

Times inside the limiter are integer microseconds, so the memory backend's arithmetic is exact and the
Redis scripts (which read the server clock in microseconds) compute the same thing.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mainspring.errors import ValidationError

__all__ = ["Decision", "Limit", "Strategy", "parse_limit", "rate_limit_headers"]

_UNITS: dict[str, float] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_LIMIT_RE = re.compile(
    r"^\s*(?P<rate>\d+)\s*(?:/|\s+per\s+)\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)
# Below a millisecond the round trip to Redis is longer than the window: such a limit means nothing.
_MIN_PER_US = 1_000
_MAX_RATE = 10**9


class Strategy(enum.StrEnum):
    """How a :class:`Limit` counts.

    - ``FIXED_WINDOW``: a counter per calendar window of ``per`` seconds; allows up to 2x ``rate`` across
      a window boundary.
    - ``SLIDING_WINDOW``: the *sliding-window counter* (two counters, the previous window's weighted by
      how much of it still overlaps the sliding window); smooth, O(1) memory, an approximation of a log.
    - ``GCRA``: the generic cell rate algorithm, a token bucket holding ``burst`` tokens refilled at
      ``rate`` per ``per`` seconds; stores one timestamp per key.
    """

    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"
    GCRA = "gcra"


def _invalid(message: str, value: Any, loc: str) -> ValidationError:
    return ValidationError(message, errors=[{"loc": [loc], "msg": message, "input": repr(value)}])


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate-limit policy: ``rate`` requests per ``per`` seconds, counted by ``strategy``.

    ``burst`` (GCRA only) is the bucket size, ``rate`` when not given. ``auth=True`` marks a limit that
    guards authentication (login, token, password reset): it fails *closed* when the backend is
    unreachable unless ``fail_open`` says otherwise. ``fail_open=None`` uses the limiter's default.
    Derived: ``per_us`` (the period in microseconds), ``capacity`` (the advertised quota: ``burst`` or
    ``rate``) and ``ident`` (strategy and parameters, part of every storage key).
    """

    rate: int
    per: float
    burst: int | None = None
    strategy: Strategy = Strategy.SLIDING_WINDOW
    auth: bool = False
    fail_open: bool | None = None
    per_us: int = field(init=False, repr=False, compare=False)
    capacity: int = field(init=False, repr=False, compare=False)
    ident: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or not 0 < self.rate <= _MAX_RATE:
            raise _invalid(
                f"rate limit rate must be a whole number between 1 and {_MAX_RATE}, got {self.rate!r}",
                self.rate,
                "rate",
            )
        if isinstance(self.per, bool) or not isinstance(self.per, int | float) or not math.isfinite(self.per):
            raise _invalid(
                f"rate limit period must be a number of seconds, got {self.per!r}", self.per, "per"
            )
        per_us = round(self.per * 1_000_000)
        if per_us < _MIN_PER_US:
            raise _invalid(f"rate limit period must be at least 0.001 s, got {self.per!r}", self.per, "per")
        if self.burst is not None and (
            isinstance(self.burst, bool) or not isinstance(self.burst, int) or not 0 < self.burst <= _MAX_RATE
        ):
            raise _invalid(
                f"rate limit burst must be a whole number between 1 and {_MAX_RATE}, got {self.burst!r}",
                self.burst,
                "burst",
            )
        if self.burst is not None and self.strategy is not Strategy.GCRA:
            raise _invalid(
                f"burst applies to the GCRA strategy only, not {self.strategy.value}; drop burst or use "
                "strategy=Strategy.GCRA",
                self.burst,
                "burst",
            )
        strategy = Strategy(self.strategy)
        capacity = self.burst if self.burst is not None else self.rate
        object.__setattr__(self, "strategy", strategy)
        object.__setattr__(self, "per_us", per_us)
        object.__setattr__(self, "capacity", capacity)
        # Strategy and parameters are part of the storage key: two policies never share (or corrupt)
        # one counter, and changing a limit starts fresh instead of misreading old state.
        object.__setattr__(self, "ident", f"{strategy.value}:{self.rate}:{per_us}:{capacity}")

    @classmethod
    def parse(cls, text: str, **options: Any) -> Limit:
        """Parse ``"100/minute"``, ``"10/s"``, ``"5/10s"`` or ``"1000 per hour"``; ``options`` go to Limit."""
        return parse_limit(text, **options)

    def __str__(self) -> str:
        """Return the limit as ``"<rate>/<per>s"`` with its strategy, e.g. ``"100/60s (sliding_window)"``."""
        return f"{self.rate}/{self.per:g}s ({self.strategy.value})"


def parse_limit(text: str, **options: Any) -> Limit:
    """Parse a limit string such as ``"100/minute"``, ``"10/s"``, ``"5/10s"`` or ``"1000 per hour"``.

    Units: s/sec/second, m/min/minute, h/hr/hour, d/day (plural forms too). ``options`` (``burst``,
    ``strategy``, ``auth``, ``fail_open``) are passed to :class:`Limit`. Raises ValidationError.
    """
    if not isinstance(text, str):
        raise _invalid(
            f"a rate limit must be a string like '100/minute', got {type(text).__name__}", text, "limit"
        )
    match = _LIMIT_RE.match(text)
    unit = match and _UNITS.get(match["unit"].lower())
    if match is None or unit is None:
        raise _invalid(
            f"cannot parse rate limit {text[:64]!r}: write '<count>/<period>' such as '100/minute', '10/s', "
            "'5/10s' or '1000 per hour'",
            text,
            "limit",
        )
    count = float(match["count"]) if match["count"] else 1.0
    if count <= 0:
        raise _invalid(f"rate limit period in {text[:64]!r} must be positive", text, "limit")
    per = count * unit
    return Limit(int(match["rate"]), int(per) if per.is_integer() else per, **options)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one rate-limit check.

    ``limit`` is the quota advertised to clients (``rate``, or ``burst`` for GCRA); ``remaining`` how many
    more requests would be allowed now; ``reset_after`` seconds until the quota is fully restored;
    ``retry_after`` seconds until the next request would be allowed (0 when this one was).
    ``degraded`` is true when the backend failed and the limit's fail-open/closed policy decided.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    window: float
    degraded: bool = False


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Return HTTP response headers for ``decision``.

    Fields of draft-ietf-httpapi-ratelimit-headers-06 (``RateLimit-Limit``, ``RateLimit-Remaining``,
    ``RateLimit-Reset`` in delta-seconds, ``RateLimit-Policy`` as ``<quota>;w=<window>``), plus
    ``Retry-After`` (RFC 9110, whole seconds rounded up) when the request was denied. A degraded decision
    (backend down) still gets headers, so clients see a consistent shape.
    """
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_after)),
        "RateLimit-Policy": f"{decision.limit};w={math.ceil(decision.window)}",
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return headers
