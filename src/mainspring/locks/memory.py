"""The in-process lock backend (``memory://``): for tests, development and single-process services.

Locks live in the backend object, so they exclude tasks of one process sharing one
:class:`~mainspring.locks.LockManager`, nothing more. Expiry is checked on every access against the
monotonic clock; waiters wake up as soon as the lock they wait for is released.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from mainspring.locks.base import Grant, LockBackend

__all__ = ["MemoryLockBackend"]


@dataclass(slots=True)
class _Entry:
    owner: str
    expires_at: float


class MemoryLockBackend(LockBackend[str]):
    """Locks in a dict of this process; the handle of a grant is its owner id."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self) -> None:
        """Start with no locks held; the fencing counters also start at 0."""
        self._held: dict[str, _Entry] = {}
        self._tokens: dict[str, int] = {}
        self._released: dict[str, asyncio.Event] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryLockBackend:
        """Build the backend; ``memory://`` takes no options."""
        return cls()

    @property
    def url(self) -> str:
        """Always ``memory://``."""
        return "memory://"

    def _current(self, name: str) -> _Entry | None:
        entry = self._held.get(name)
        if entry is not None and entry.expires_at <= time.monotonic():
            del self._held[name]
            return None
        return entry

    async def try_acquire(self, name: str, ttl: float) -> Grant[str] | None:
        """Take ``name`` if free or expired, with the next fencing token."""
        if self._current(name) is not None:
            return None
        owner = secrets.token_hex(8)
        token = self._tokens.get(name, 0) + 1
        self._tokens[name] = token
        now = time.monotonic()
        self._held[name] = _Entry(owner, now + ttl)
        return Grant(name, token, owner, now)

    async def extend(self, grant: Grant[str], ttl: float) -> bool:
        """Move the expiry to ``ttl`` seconds from now if the lock is still this grant's."""
        entry = self._current(grant.name)
        if entry is None or entry.owner != grant.handle:
            return False
        entry.expires_at = time.monotonic() + ttl
        return True

    async def release(self, grant: Grant[str]) -> bool:
        """Drop the lock if it is still this grant's and wake up its waiters."""
        entry = self._current(grant.name)
        if entry is None or entry.owner != grant.handle:
            return False
        del self._held[grant.name]
        event = self._released.pop(grant.name, None)
        if event is not None:
            event.set()
        return True

    async def wait_for_change(self, name: str, delay: float) -> None:
        """Sleep until ``name`` is released or ``delay`` seconds pass (expiry is noticed by the latter)."""
        event = self._released.setdefault(name, asyncio.Event())
        try:
            async with asyncio.timeout(delay):
                await event.wait()
        except TimeoutError:
            return
