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


def test_demo_help_lists_host_port_and_profile(capsys: pytest.CaptureFixture[str]) -> None:
    # Running the demo itself is tested over HTTP in tests/integration/demo/.
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0
    for option in ("--host", "--port", "--profile"):
        assert option in out


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
