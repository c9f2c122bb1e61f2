"""aio-pika's robust connection with a capped, jittered back-off between reconnection attempts.

Imported by :mod:`mainspring.messaging.rabbitmq` only once the ``rabbitmq`` extra is known to be
installed.
"""

from __future__ import annotations

import random
import time
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractRobustConnection, ConnectionParameter
from aiormq.connection import parse_timeout

__all__ = ["BackoffRobustConnection"]

#: Jitter: each pause is this fraction (at random) of the computed one, so clients don't reconnect in step.
_JITTER = (0.5, 1.0)


class BackoffRobustConnection(RobustConnection):
    """A robust connection whose pause between reconnection attempts grows while the broker stays away.

    aio-pika sleeps ``reconnect_interval`` seconds between attempts and reads the attribute each time;
    here it is computed on every read: the configured interval while connected, then about as long as
    the connection has been down (so the pauses roughly double), at most ``max_reconnect_interval``
    (a URL/keyword parameter, default 30 s), with jitter.
    """

    PARAMETERS = (
        *RobustConnection.PARAMETERS,
        ConnectionParameter(name="max_reconnect_interval", parser=parse_timeout, default="30"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the connection (see :class:`aio_pika.RobustConnection`); nothing connects yet."""
        self._base_interval = 1.0
        self._down_since: float | None = None
        super().__init__(*args, **kwargs)
        self._max_interval = float(self.kwargs.pop("max_reconnect_interval"))
        self.close_callbacks.add(self._mark_down)
        self.reconnect_callbacks.add(self._mark_up)

    @property
    def reconnect_interval(self) -> float:
        """The pause before the next reconnection attempt, in seconds."""
        if self._down_since is None:
            return self._base_interval
        down = time.monotonic() - self._down_since
        pause = min(self._max_interval, max(self._base_interval, down))
        return pause * random.uniform(*_JITTER)  # jitter, not cryptography

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)

    def _mark_down(self, _sender: AbstractConnection | None, _exc: BaseException | None = None) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()

    def _mark_up(self, _sender: AbstractRobustConnection | None) -> None:
        self._down_since = None
