"""Distributed locks with fencing tokens: in memory, on Redis, or as PostgreSQL advisory locks.

::

    from mainspring.locks import LockManager

    async with LockManager.from_url("redis://localhost:6379/0") as locks:
        async with locks.acquire("order:42", ttl=10, wait=5) as lease:
            await save(order, fencing_token=lease.token)

The backend is chosen by URL scheme: ``memory://`` (this process only), ``redis://`` / ``rediss://``
(extra ``redis``), ``postgresql://`` (extra ``postgres``). See ``docs/locks.md``.
"""

from mainspring.locks._manager import SUPPORTED_SCHEMES, LockManager, create_lock_manager
from mainspring.locks.base import Lease, LockAcquisition, LockBackend, LockLostError, LockTimeoutError

__all__ = [
    "SUPPORTED_SCHEMES",
    "Lease",
    "LockAcquisition",
    "LockBackend",
    "LockLostError",
    "LockManager",
    "LockTimeoutError",
    "create_lock_manager",
]
