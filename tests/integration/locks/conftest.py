"""Fixtures of the lock suites: a lock URL per backend and a started manager on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mainspring.locks import LockManager

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
    pytest.param("postgres", id="postgres", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def lock_url(request: pytest.FixtureRequest) -> str:
    """``memory://``, or an isolated Redis database / fresh PostgreSQL database from the test kit."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def locks(lock_url: str) -> AsyncIterator[LockManager]:
    """A started manager on ``lock_url``, stopped after the test."""
    async with LockManager.from_url(lock_url) as manager:
        yield manager
