"""The ``mainspring`` entry point: version, demo, and how errors end the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainspring import __version__
from mainspring.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"mainspring {__version__}"


def test_demo_prints_effective_config_and_command_help(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/ and no .env here: embedded defaults only
    code, out, _ = run(["demo"], capsys)
    assert code == 0
    assert "service_name: mainspring-service" in out
    assert "secret_key: '**********'" in out
    assert "dev-insecure" not in out
    assert "config" in out
    assert "Usage" in out


def test_config_error_ends_with_one_clear_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["config", "show", "--profile", "staging"], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: unknown profile 'staging'")
    assert "Traceback" not in err


def test_unknown_option_is_a_usage_error_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--no-such-option"], capsys)
    assert code == 2
    assert "No such option" in err
    assert "Traceback" not in err
