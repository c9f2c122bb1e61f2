"""The lock contract every backend implements, and what they share: leases, errors, the wait loop.

A backend (``memory.py``, ``redis.py``, ``postgres.py``) only knows how to take, extend and release one
lock once; waiting with backoff, input checks, fencing-token bookkeeping, the auto-extend task and the
"lost" state of a lease live here, so every backend behaves the same way.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from mainspring.errors import ConflictError, InternalError, MainspringError, ValidationError
from mainspring.logging import get_logger

__all__ = [
    "MAX_NAME_LENGTH",
    "Grant",
    "Lease",
    "LockAcquisition",
    "LockBackend",
    "LockLostError",
    "LockTimeoutError",
    "check_name",
    "check_ttl",
    "check_wait",
]

log = get_logger("mainspring.locks")

HandleT = TypeVar("HandleT")

#: Longest lock name accepted (characters); keys and table rows stay small and indexable.
MAX_NAME_LENGTH = 512

# Backoff between attempts while waiting for a held lock (seconds): short at first, so a hand-over is
# noticed quickly, growing so that many waiters do not hammer the server.
POLL_MIN = 0.005
POLL_MAX = 0.1


class LockTimeoutError(ConflictError):
    """The lock stayed held by someone else for the whole ``wait`` (409)."""

    code = "lock_timeout"


class LockLostError(ConflictError):
    """A lease was no longer held when it was used: its ttl ran out, or its connection was lost (409).

    The work done under it may have overlapped with another holder; writes that matter should carry
    ``lease.token`` as a fencing token so the storage can reject a stale holder.
    """

    code = "lock_lost"


# --- input checks ---------------------------------------------------------------------------------


def _invalid(field: str, message: str, value: object) -> ValidationError:
    return ValidationError(
        message,
        errors=[{"loc": [field], "msg": message, "input": repr(value)[:80]}],
        details={"field": field},
    )


def check_name(name: object) -> str:
    """Return ``name`` if it is a usable lock name, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not name:
        raise _invalid("name", "a lock name must be a non-empty string, such as 'order:42'", name)
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(
            "name", f"a lock name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}", name
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise _invalid("name", "a lock name must not contain control characters (NUL, newline, ...)", name)
    return name


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, f"{field} must be a finite number of seconds, got {value!r}", value)
    return float(value)


def check_ttl(ttl: object) -> float:
    """Return ``ttl`` as seconds if it is a finite number > 0, else raise :class:`ValidationError`."""
    seconds = _number("ttl", ttl)
    if seconds <= 0:
        raise _invalid("ttl", f"ttl must be > 0 seconds, got {ttl!r}", ttl)
    return seconds


def check_wait(wait: object) -> float:
    """Return ``wait`` as seconds if it is a finite number >= 0, else raise :class:`ValidationError`."""
    seconds = _number("wait", wait)
    if seconds < 0:
        raise _invalid("wait", f"wait must be >= 0 seconds (0 tries once), got {wait!r}", wait)
    return seconds


# --- backend contract -----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Grant(Generic[HandleT]):
    """What a backend hands back for a lock it took: the fencing token and its own handle.

    ``since`` is a ``time.monotonic()`` reading taken before the request that took the lock, so the
    ttl counted from it ends no later than on the server. ``lost_reason`` is set by the backend when it
    learns the lock is gone (a closed connection); the lease reports it.
    """

    name: str
    token: int
    handle: HandleT
    since: float
    lost_reason: str | None = None


class LockBackend(ABC, Generic[HandleT]):
    """The contract of a lock backend: take, extend and release one named lock, with a fencing token.

    Implementations open their connections in :meth:`start`, never in ``__init__``, put a timeout on
    every network call, and raise :class:`~mainspring.errors.ServiceUnavailableError` when the server
    cannot be reached. Taking a lock must increment the name's fencing token atomically with it.
    """

    #: URL schemes this backend serves (``redis``, ``rediss``).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Keyword options :meth:`from_url` accepts; anything else is a configuration error.
    options: ClassVar[frozenset[str]] = frozenset()
    #: Whether the server drops a lock when its ttl runs out. If not, the lease does it itself.
    expires_on_server: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: Any) -> LockBackend[HandleT]:
        """Build the backend for ``url`` with the given options; nothing connects yet."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The backend URL with any password masked, for messages and logs."""

    async def start(self) -> None:
        """Open connections; raise ``ServiceUnavailableError`` if the server does not answer in time."""

    async def stop(self) -> None:
        """Close connections; safe to call when not started."""

    @abstractmethod
    async def try_acquire(self, name: str, ttl: float) -> Grant[HandleT] | None:
        """Take ``name`` for ``ttl`` seconds if nobody holds it; ``None`` if somebody does."""

    @abstractmethod
    async def extend(self, grant: Grant[HandleT], ttl: float) -> bool:
        """Reset the lock's ttl to ``ttl`` seconds from now if it is still ours; ``False`` if not."""

    @abstractmethod
    async def release(self, grant: Grant[HandleT]) -> bool:
        """Release the lock if it is still ours (never anybody else's); ``False`` if it was not."""

    async def acquire(self, name: str, ttl: float, wait: float) -> Grant[HandleT] | None:
        """Take ``name``, waiting up to ``wait`` seconds; ``None`` if it stayed held.

        The default polls :meth:`try_acquire` with exponential backoff and jitter; a backend with a
        native blocking wait overrides this.
        """
        deadline = time.monotonic() + wait
        delay = POLL_MIN
        while True:
            grant = await self.try_acquire(name, ttl)
            if grant is not None:
                return grant
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Jitter spreads waiters that started together, so they do not all retry at once.
            await self.wait_for_change(name, min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, POLL_MAX)

    async def wait_for_change(self, name: str, delay: float) -> None:
        """Sleep up to ``delay`` seconds before the next attempt; a backend may wake up earlier."""
        await asyncio.sleep(delay)


# --- leases ---------------------------------------------------------------------------------------


class Lease:
    """A held lock: its name, fencing token and ttl; release it, extend it, check it is still held.

    Use it through ``async with manager.acquire(...) as lease:``, which releases on exit; or
    ``lease = await manager.acquire(...)`` and ``await lease.release()``.

    ``token`` grows strictly with every acquisition of the same name, on every backend: pass it along
    with writes so the storage can refuse one from a holder whose lock already expired.

    A lease can be *lost* while held: its ttl ran out without an extend, the auto-extend task found it
    taken over, or (PostgreSQL) its connection died. ``lost`` and ``lost_reason`` say so;
    :meth:`ensure_held` raises :class:`LockLostError` for code that wants to stop.
    """

    def __init__(
        self,
        backend: LockBackend[Any],
        grant: Grant[Any],
        *,
        ttl: float,
        deadline: float,
        auto_extend: bool,
        on_done: Callable[[Lease], None] | None = None,
    ) -> None:
        """Wrap ``grant`` taken from ``backend``; ``deadline`` is when it expires (monotonic clock)."""
        self._backend = backend
        self._grant = grant
        self._ttl = ttl
        self._deadline = deadline
        self._auto_extend = auto_extend
        self._on_done = on_done
        self._released = False
        self._lost_reason: str | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost else "held"
        return f"Lease(name={self.name!r}, token={self.token}, ttl={self._ttl:g}, {state})"

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._grant.name

    @property
    def token(self) -> int:
        """The fencing token: strictly greater than that of every earlier lease on this name."""
        return self._grant.token

    @property
    def ttl(self) -> float:
        """The ttl (seconds) of the last acquire or extend."""
        return self._ttl

    @property
    def auto_extend(self) -> bool:
        """Whether a background task extends the lock while it is held."""
        return self._auto_extend

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run."""
        return self._released

    @property
    def expires_in(self) -> float:
        """Seconds until the ttl runs out (a local, conservative estimate); 0 once it has."""
        return max(0.0, self._deadline - time.monotonic())

    @property
    def lost_reason(self) -> str | None:
        """Why the lock is no longer held while the lease thinks it should be; ``None`` when it is."""
        if self._released:
            return None
        reason = self._lost_reason or self._grant.lost_reason
        if reason is None and time.monotonic() >= self._deadline:
            reason = f"its ttl of {self._ttl:g} s ran out without an extend"
        return reason

    @property
    def lost(self) -> bool:
        """Whether the lock slipped away before release (ttl ran out, taken over, connection lost)."""
        return self.lost_reason is not None

    @property
    def held(self) -> bool:
        """Whether the lock is (as far as this process knows) still held: not released and not lost."""
        return not self._released and not self.lost

    def ensure_held(self) -> None:
        """Raise :class:`LockLostError` unless the lock is still held; call it before a critical write."""
        if self._released:
            raise self._lost_error("it was already released")
        reason = self.lost_reason
        if reason is not None:
            raise self._lost_error(reason)

    async def extend(self, ttl: float | None = None) -> None:
        """Reset the ttl to ``ttl`` (default: the current one) seconds from now.

        Raises :class:`LockLostError` if the lock is no longer ours; it is then left alone.
        """
        seconds = self._ttl if ttl is None else check_ttl(ttl)
        if self._released:
            raise self._lost_error("it was already released")
        reason = self._lost_reason or self._grant.lost_reason
        if reason is not None:
            raise self._lost_error(reason)
        started = time.monotonic()
        if not await self._backend.extend(self._grant, seconds):
            self._lost_reason = "it was no longer held when extended (expired, maybe taken over)"
            raise self._lost_error(self._lost_reason)
        self._ttl = seconds
        self._deadline = started + seconds

    async def release(self) -> bool:
        """Release the lock; ``True`` if it was still ours, ``False`` if it had been lost meanwhile.

        Another holder's lock is never touched. A second call returns ``False``. Raises
        ``ServiceUnavailableError`` if the server cannot be reached; the lock then ends with its ttl.
        """
        if self._released:
            return False
        self._released = True
        try:
            await self._stop_keeper()
            was_lost = self._lost_reason is not None or self._grant.lost_reason is not None
            released = await self._backend.release(self._grant)
        finally:
            if self._on_done is not None:
                self._on_done(self)
        if not released or was_lost:
            log.warning(
                "lock was lost before release",
                lock=self.name,
                fence=self.token,
                reason=self._lost_reason or self._grant.lost_reason or "expired or taken over",
            )
            return False
        return True

    async def __aenter__(self) -> Lease:
        """Return the lease itself; the block's exit releases it."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Release; raise :class:`LockLostError` if the block succeeded but the lock had been lost.

        When the block raised, its exception wins: a failing release is logged, not raised over it.
        """
        if self._released:
            return
        reason_before = self.lost_reason
        if exc is not None:
            try:
                await self.release()
            except MainspringError as release_error:
                log.error("lock release failed", lock=self.name, error=release_error.message)
            return
        if not await self.release():
            reason = self._lost_reason or self._grant.lost_reason or reason_before
            raise self._lost_error(reason or "it was no longer held at release (expired, maybe taken over)")

    def _lost_error(self, reason: str) -> LockLostError:
        return LockLostError(
            f"lock {self.name!r} (token {self.token}) is no longer held: {reason}; work done under it "
            "may have overlapped with another holder (use lease.token as a fencing token on writes, "
            "a longer ttl, or auto_extend=True)",
            details={"lock": self.name, "token": self.token},
        )

    # The keeper is one owned, named task per lease: it extends the lock (auto_extend) or, for a backend
    # whose server does not expire locks, releases it when its ttl runs out. Cancelled on release.

    def _start_keeper(self) -> None:
        if self._auto_extend:
            self._keeper = asyncio.create_task(
                self._keep_extending(), name=f"mainspring.locks:extend:{self.name}"
            )
        elif not self._backend.expires_on_server:
            self._keeper = asyncio.create_task(
                self._expire_at_deadline(), name=f"mainspring.locks:expire:{self.name}"
            )

    async def _stop_keeper(self) -> None:
        task, self._keeper = self._keeper, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        # wait() rather than awaiting the task: it does not re-raise the task's CancelledError, yet a
        # cancellation of *this* task still propagates.
        await asyncio.wait([task])

    def _give_up(self, reason: str, **fields: Any) -> None:
        self._lost_reason = reason
        log.error("lock lost while held", lock=self.name, fence=self.token, reason=reason, **fields)

    async def _keep_extending(self) -> None:
        try:
            while True:
                # Extend when a third of the ttl has passed, leaving two thirds for retries.
                await asyncio.sleep(max(0.0, self._deadline - self._ttl * 2 / 3 - time.monotonic()))
                if self._grant.lost_reason is not None:
                    self._give_up(self._grant.lost_reason)
                    return
                started = time.monotonic()
                try:
                    still_ours = await self._backend.extend(self._grant, self._ttl)
                except MainspringError as exc:
                    if time.monotonic() >= self._deadline:
                        self._give_up(f"auto-extend failed until the ttl ran out: {exc.message}")
                        return
                    log.warning("lock auto-extend failed, retrying", lock=self.name, error=exc.message)
                    await asyncio.sleep(min(self._ttl / 6, max(0.0, self._deadline - time.monotonic()) / 2))
                    continue
                if not still_ours:
                    self._give_up("auto-extend found it no longer held (expired, maybe taken over)")
                    return
                self._deadline = started + self._ttl
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not an outage: say so loudly and stop claiming the lock is held.
            log.exception("lock auto-extend crashed", lock=self.name)
            self._lost_reason = f"auto-extend crashed: {type(exc).__name__}: {exc}"

    async def _expire_at_deadline(self) -> None:
        try:
            # Re-read the deadline after each sleep: an extend may have moved it meanwhile.
            while True:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(remaining)
            # Even when the backend already saw the lock go, release() returns its connection.
            await self._backend.release(self._grant)
            self._lost_reason = self._lost_reason or f"its ttl of {self._ttl:g} s ran out without an extend"
            log.warning("lock ttl ran out; released it", lock=self.name, fence=self.token, ttl=self._ttl)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("releasing an expired lock failed", lock=self.name)
            self._lost_reason = f"its ttl ran out and releasing it failed: {type(exc).__name__}: {exc}"


class LockAcquisition:
    """The result of ``manager.acquire(...)``: ``async with`` it, or ``await`` it for a :class:`Lease`."""

    def __init__(self, acquire: Callable[[], Awaitable[Lease]]) -> None:
        """Wrap ``acquire``, a no-argument coroutine function returning the lease."""
        self._acquire = acquire
        self._lease: Lease | None = None

    def __await__(self) -> Generator[Any, None, Lease]:
        """Acquire and return the lease; the caller releases it."""
        return (yield from self._acquire().__await__())

    async def __aenter__(self) -> Lease:
        """Acquire and return the lease; the block's exit releases it."""
        if self._lease is not None:
            raise InternalError("this acquisition was already entered; call manager.acquire() again")
        self._lease = await self
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Release the lease (see :meth:`Lease.__aexit__`)."""
        if self._lease is not None:
            await self._lease.__aexit__(exc_type, exc, tb)
