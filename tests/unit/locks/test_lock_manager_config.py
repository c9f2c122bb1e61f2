"""Choosing and configuring a lock backend, and rejecting bad input, without any server."""

from __future__ import annotations

import sys

import pytest

from mainspring.errors import (
    ConfigError,
    ConflictError,
    InternalError,
    MissingDependencyError,
    ServiceUnavailableError,
    ValidationError,
)
from mainspring.locks import (
    SUPPORTED_SCHEMES,
    LockLostError,
    LockManager,
    LockTimeoutError,
    create_lock_manager,
)
from mainspring.locks.memory import MemoryLockBackend
from mainspring.locks.postgres import PostgresLockBackend
from mainspring.locks.redis import RedisLockBackend

# Nothing listens on port 1: a refused connection, fast and without a server.
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_POSTGRES = "postgresql://postgres:pw@127.0.0.1:1/app"


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("memory://", MemoryLockBackend),
        ("redis://localhost:6379/0", RedisLockBackend),
        ("rediss://localhost:6380/1", RedisLockBackend),
        ("postgresql://app@localhost/app", PostgresLockBackend),
        ("postgres://app@localhost/app", PostgresLockBackend),
        ("postgresql+asyncpg://app@localhost/app", PostgresLockBackend),
    ],
)
def test_backend_is_chosen_by_url_scheme(url: str, backend: type) -> None:
    manager = LockManager.from_url(url)
    assert isinstance(manager.backend, backend)
    assert not manager.started
    assert isinstance(create_lock_manager(url).backend, backend)


def test_unknown_scheme_lists_the_supported_schemes_and_extras() -> None:
    with pytest.raises(ConfigError) as caught:
        LockManager.from_url("zookeeper://user:hunter2@zk:2181")
    message = caught.value.message
    for text in ("'zookeeper'", "memory://", "redis://", "rediss://", "postgresql://"):
        assert text in message
    assert "mainspring[redis]" in message
    assert "mainspring[postgres]" in message
    assert "hunter2" not in message
    assert caught.value.problems[0].path == "url"
    assert set(caught.value.details["supported_schemes"]) == set(SUPPORTED_SCHEMES)


@pytest.mark.parametrize("url", ["", "localhost:6379", "redis"])
def test_text_that_is_not_a_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="not a URL"):
        LockManager.from_url(url)


def test_unknown_option_names_the_options_the_backend_has() -> None:
    with pytest.raises(ConfigError) as caught:
        LockManager.from_url("redis://localhost/0", table="locks")
    assert "table" in caught.value.message
    assert "connect_timeout, key_prefix, timeout" in caught.value.message


def test_memory_backend_takes_no_options() -> None:
    with pytest.raises(ConfigError, match="supported: none"):
        LockManager.from_url("memory://", timeout=1)


@pytest.mark.parametrize(
    ("url", "options", "path"),
    [
        ("redis://localhost/0", {"timeout": 0}, "timeout"),
        ("redis://localhost/0", {"connect_timeout": True}, "connect_timeout"),
        ("redis://localhost:notaport/0", {}, "url"),
        ("postgresql://app@localhost/app", {"timeout": -1}, "timeout"),
        ("postgresql://app@localhost/app", {"max_connections": 0}, "max_connections"),
        ("postgresql://app@localhost/app", {"table": "locks; DROP TABLE x"}, "table"),
        ("postgresql:///app", {}, "url"),
    ],
)
def test_invalid_backend_options_are_config_errors(url: str, options: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LockManager.from_url(url, **options)
    assert [p.path for p in caught.value.problems] == [path]


def test_schema_qualified_token_table_is_accepted() -> None:
    LockManager.from_url("postgresql://app@localhost/app", table="infra.lock_tokens")


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("redis://localhost/0", "redis.asyncio.connection", "redis"),
        ("postgresql://app@localhost/app", "asyncpg", "postgres"),
    ],
)
def test_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    # A None entry makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as caught:
        LockManager.from_url(url)
    assert f"mainspring[{extra}]" in caught.value.message


def test_repr_and_url_mask_the_password() -> None:
    manager = LockManager.from_url("redis://app:hunter2@localhost:6379/0")
    assert "hunter2" not in repr(manager)
    assert "hunter2" not in manager.url
    assert "localhost:6379" in manager.url


@pytest.mark.parametrize("url", [DEAD_REDIS, DEAD_POSTGRES])
async def test_nothing_connects_until_start_which_reports_an_unreachable_server(url: str) -> None:
    manager = LockManager.from_url(url, connect_timeout=2)  # no error: nothing connected yet
    with pytest.raises(ServiceUnavailableError) as caught:
        await manager.start()
    assert "connect failed" in caught.value.message
    assert "pw@" not in caught.value.message
    assert not manager.started


async def test_acquire_before_start_says_to_start_the_manager() -> None:
    manager = LockManager.from_url("memory://")
    with pytest.raises(InternalError, match=r"not started.*manager\.start\(\)"):
        await manager.acquire("order:42")


async def test_stop_without_start_is_harmless_and_start_is_idempotent() -> None:
    manager = LockManager.from_url("memory://")
    await manager.stop()
    await manager.start()
    await manager.start()
    assert manager.started
    await manager.stop()
    assert not manager.started


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("", {}, "name"),
        (None, {}, "name"),
        ("bad\nname", {}, "name"),
        ("nul\x00", {}, "name"),
        ("x" * 513, {}, "name"),
        ("ok", {"ttl": 0}, "ttl"),
        ("ok", {"ttl": -1}, "ttl"),
        ("ok", {"ttl": float("nan")}, "ttl"),
        ("ok", {"ttl": True}, "ttl"),
        ("ok", {"ttl": "10"}, "ttl"),
        ("ok", {"wait": -0.1}, "wait"),
        ("ok", {"wait": float("inf")}, "wait"),
    ],
)
async def test_bad_input_is_a_validation_error_raised_at_the_call(
    name: object, options: dict[str, object], field: str
) -> None:
    async with LockManager.from_url("memory://") as manager:
        with pytest.raises(ValidationError) as caught:
            manager.acquire(name, **options)  # type: ignore[arg-type]
    assert caught.value.errors[0]["loc"] == [field]
    assert caught.value.details == {"field": field}


def test_longest_allowed_name_is_accepted() -> None:
    LockManager.from_url("memory://").acquire("x" * 512)


@pytest.mark.parametrize(("option", "value"), [("default_ttl", 0), ("default_wait", -1)])
def test_bad_defaults_are_validation_errors(option: str, value: float) -> None:
    with pytest.raises(ValidationError):
        LockManager.from_url("memory://", **{option: value})


async def test_extend_with_bad_ttl_is_a_validation_error() -> None:
    async with LockManager.from_url("memory://") as manager, manager.acquire("a", ttl=5) as lease:
        with pytest.raises(ValidationError):
            await lease.extend(0)


async def test_one_acquisition_cannot_be_entered_twice() -> None:
    async with LockManager.from_url("memory://") as manager:
        acquisition = manager.acquire("a", ttl=5)
        async with acquisition:
            with pytest.raises(InternalError, match="already entered"):
                await acquisition.__aenter__()


def test_lock_errors_are_conflicts_with_stable_codes() -> None:
    timeout = LockTimeoutError("held")
    lost = LockLostError("lost")
    assert isinstance(timeout, ConflictError)
    assert isinstance(lost, ConflictError)
    assert timeout.to_problem()["code"] == "lock_timeout"
    assert lost.to_problem()["code"] == "lock_lost"
    assert timeout.http_status == lost.http_status == 409
