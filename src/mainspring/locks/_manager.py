"""``LockManager``: the front door of distributed locks, with its backend chosen by URL."""

from __future__ import annotations

from typing import Any

from mainspring._lifecycle import AsyncLifecycle
from mainspring.config._safety import mask_url_password
from mainspring.errors import ConfigError, ConfigProblem, InternalError, MainspringError
from mainspring.locks.base import (
    Lease,
    LockAcquisition,
    LockBackend,
    LockTimeoutError,
    check_name,
    check_ttl,
    check_wait,
    log,
)
from mainspring.locks.memory import MemoryLockBackend
from mainspring.locks.postgres import PostgresLockBackend
from mainspring.locks.redis import RedisLockBackend

__all__ = ["SUPPORTED_SCHEMES", "LockManager", "create_lock_manager"]

_BACKENDS: tuple[tuple[type[LockBackend[Any]], str], ...] = (
    (MemoryLockBackend, "built in"),
    (RedisLockBackend, "install 'mainspring[redis]'"),
    (PostgresLockBackend, "install 'mainspring[postgres]'"),
)
_BY_SCHEME = {scheme: backend for backend, _ in _BACKENDS for scheme in backend.schemes}

#: Every URL scheme :meth:`LockManager.from_url` understands.
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_BY_SCHEME)


def _supported() -> str:
    return "; ".join(
        f"{' / '.join(s + '://' for s in backend.schemes)} ({extra})" for backend, extra in _BACKENDS
    )


class LockManager(AsyncLifecycle):
    """Distributed locks by name: ``async with locks.acquire("order:42", ttl=10, wait=5) as lease:``.

    Build it from a URL (:meth:`from_url`): ``memory://`` (this process only), ``redis://...`` or
    ``postgresql://...``. Nothing connects until :meth:`start` (or ``async with manager:``); :meth:`stop`
    releases the leases still held and closes the connections.
    """

    def __init__(
        self, backend: LockBackend[Any], *, default_ttl: float = 30.0, default_wait: float = 0.0
    ) -> None:
        """Use ``backend``; ``default_ttl`` and ``default_wait`` apply when ``acquire`` leaves them out."""
        self._backend = backend
        self._default_ttl = check_ttl(default_ttl)
        self._default_wait = check_wait(default_wait)
        self._started = False
        self._leases: set[Lease] = set()

    @classmethod
    def from_url(
        cls, url: str, *, default_ttl: float = 30.0, default_wait: float = 0.0, **options: Any
    ) -> LockManager:
        """Build a manager for ``url``; ``options`` go to the backend (``timeout``, ``key_prefix``, ...).

        Raises :class:`~mainspring.errors.ConfigError` for an unknown scheme or option, and
        :class:`~mainspring.errors.MissingDependencyError` when the backend's extra is not installed.
        """
        scheme = url.partition("://")[0].lower() if isinstance(url, str) and "://" in url else ""
        backend_class = _BY_SCHEME.get(scheme)
        shown = mask_url_password(url) if isinstance(url, str) else repr(url)
        if backend_class is None:
            reason = f"unsupported scheme {scheme!r}" if scheme else "not a URL (expected scheme://...)"
            raise ConfigError(
                f"cannot choose a lock backend: {reason}; supported: {_supported()}",
                problems=[ConfigProblem("url", reason, shown)],
                details={"supported_schemes": list(SUPPORTED_SCHEMES)},
            )
        unknown = sorted(set(options) - backend_class.options)
        if unknown:
            allowed = ", ".join(sorted(backend_class.options)) or "none"
            raise ConfigError(
                f"unknown option(s) for the {scheme} lock backend: {', '.join(unknown)} "
                f"(supported: {allowed})",
                problems=[ConfigProblem(name, "not an option of this backend") for name in unknown],
            )
        return cls(backend_class.from_url(url, **options), default_ttl=default_ttl, default_wait=default_wait)

    def __repr__(self) -> str:
        return f"LockManager({self._backend.url!r}, started={self._started})"

    @property
    def backend(self) -> LockBackend[Any]:
        """The backend in use."""
        return self._backend

    @property
    def url(self) -> str:
        """The backend URL with any password masked."""
        return self._backend.url

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (and :meth:`stop` has not since)."""
        return self._started

    async def start(self) -> None:
        """Connect the backend; ``ServiceUnavailableError`` if it does not answer in time."""
        if not self._started:
            await self._backend.start()
            self._started = True

    async def stop(self) -> None:
        """Release every lease still held (errors are logged), then close the backend's connections."""
        if not self._started:
            return
        self._started = False
        try:
            for lease in list(self._leases):
                try:
                    await lease.release()
                except MainspringError as exc:
                    log.warning("lock release at stop failed", lock=lease.name, error=exc.message)
        finally:
            self._leases.clear()
            await self._backend.stop()

    def acquire(
        self, name: str, *, ttl: float | None = None, wait: float | None = None, auto_extend: bool = False
    ) -> LockAcquisition:
        """Take lock ``name`` for ``ttl`` seconds, waiting up to ``wait`` seconds while someone holds it.

        Use as ``async with manager.acquire(...) as lease:`` (released on exit) or
        ``lease = await manager.acquire(...)``. ``wait=0`` tries once. With ``auto_extend=True`` a
        background task extends the lock every ``ttl / 3`` until release. Raises
        :class:`LockTimeoutError` when the wait runs out, ``ValidationError`` for a bad name, ttl or
        wait (at once, before anything is awaited).
        """
        checked_name = check_name(name)
        seconds = self._default_ttl if ttl is None else check_ttl(ttl)
        patience = self._default_wait if wait is None else check_wait(wait)
        return LockAcquisition(lambda: self._acquire(checked_name, seconds, patience, auto_extend))

    async def _acquire(self, name: str, ttl: float, wait: float, auto_extend: bool) -> Lease:
        if not self._started:
            raise InternalError(
                f"lock manager for {self.url} is not started: call 'await manager.start()' "
                "or use 'async with'"
            )
        grant = await self._backend.acquire(name, ttl, wait)
        if grant is None:
            waited = f"was not released within {wait:g} s" if wait else "(tried once, wait=0)"
            raise LockTimeoutError(
                f"lock {name!r} is held by someone else: it {waited}; retry later, or pass a longer wait=",
                details={"lock": name, "wait": wait},
            )
        lease = Lease(
            self._backend,
            grant,
            ttl=ttl,
            deadline=grant.since + ttl,
            auto_extend=auto_extend,
            on_done=self._leases.discard,
        )
        self._leases.add(lease)
        lease._start_keeper()
        return lease


def create_lock_manager(
    url: str, *, default_ttl: float = 30.0, default_wait: float = 0.0, **options: Any
) -> LockManager:
    """Build a :class:`LockManager` for ``url`` (the same as :meth:`LockManager.from_url`)."""
    return LockManager.from_url(url, default_ttl=default_ttl, default_wait=default_wait, **options)
