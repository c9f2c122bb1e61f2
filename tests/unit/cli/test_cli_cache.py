"""``mainspring cache``: stats, get and clear on memory and Redis; bad input as one line, exit status 2."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mainspring.cache import create_cache
from mainspring.cli import main
from mainspring.testing import ServiceURL


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MAINSPRING_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_of_the_configured_memory_cache(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cache", "stats")
    assert code == 0
    assert "backend: memory" in out
    assert "healthy: yes" in out
    assert "hit ratio: 0.000" in out


def test_stats_reads_the_cache_url_from_the_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_CACHE__URL", "nosuch://x")
    code, out, err = run(capsys, "cache", "stats")
    assert code == 2
    assert out == ""
    # A ConfigError: one error line, then one line per problem (no traceback).
    first, problem = err.strip().splitlines()
    assert first.startswith("error: invalid configuration")
    assert "cache.url" in problem
    assert "nosuch://x" in problem


def test_get_of_a_missing_key_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "cache", "get", "user:1")
    assert code == 2
    assert out == ""
    assert err.strip() == "error: no fresh value cached for key 'user:1' (missing, expired or invalidated)"


def test_clear_needs_a_prefix_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cache", "clear")
    assert code == 2
    assert err.startswith("error: give a PREFIX to clear, or --all")
    code, _, err = run(capsys, "cache", "clear", "user:", "--all")
    assert code == 2
    assert "not both" in err
    code, out, _ = run(capsys, "cache", "clear", "--all", "--url", "memory://")
    assert (code, out) == (0, "cleared 0 keys\n")


def test_an_unsupported_url_is_an_error_naming_the_schemes_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "cache", "get", "k", "--url", "ftp://nowhere")
    assert code == 2
    assert out == ""
    first, problem = err.strip().splitlines()
    assert first == "error: invalid cache URL"
    assert "use one of: memory://" in problem
    assert "Traceback" not in err


def test_get_and_clear_on_redis(capsys: pytest.CaptureFixture[str], redis_url: ServiceURL) -> None:
    async def seed() -> None:
        cache = create_cache(str(redis_url))
        await cache.start()
        try:
            await cache.set("user:1", {"name": "ada", "tags": [1, 2]}, ttl=300)
            await cache.set("user:2", "bob", ttl=300)
            await cache.set("order:1", 7)
        finally:
            await cache.stop()

    asyncio.run(seed())
    code, out, err = run(capsys, "cache", "get", "user:1", "--url", str(redis_url))
    assert code == 0, err
    assert out == '{\n  "name": "ada",\n  "tags": [\n    1,\n    2\n  ]\n}\n'
    assert err.startswith("ttl: ")
    code, out, _ = run(capsys, "cache", "clear", "user:", "--url", str(redis_url))
    assert (code, out) == (0, "cleared 2 keys\n")
    code, _, _ = run(capsys, "cache", "get", "user:2", "--url", str(redis_url))
    assert code == 2
    code, out, _ = run(capsys, "cache", "get", "order:1", "--url", str(redis_url))
    assert (code, out) == (0, "7\n")
    code, out, _ = run(capsys, "cache", "stats", "--url", str(redis_url))
    assert code == 0
    assert "healthy: yes" in out
