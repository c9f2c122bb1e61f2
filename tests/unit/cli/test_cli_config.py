"""``mainspring config show``: YAML and JSON output with sources, masking, and one-line errors."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainspring.cli import main
from mainspring.cli._config import show_config
from mainspring.errors import BadRequestError

SECRET = "s3cret-value-that-must-never-be-printed-0123456789"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory as the current directory, with no MAINSPRING_* variables around."""
    for name in list(os.environ):
        if name.upper().startswith(("MAINSPRING_", "SHOP_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config"
    config.mkdir()
    (config / "base.yaml").write_text(
        textwrap.dedent(
            """\
            service_name: shop
            cors:
              allow_origins: ["https://shop.example"]
            logging:
              levels:
                sqlalchemy.engine: warning
            """
        )
    )
    (config / "staging.yaml").write_text("logging:\n  format: console\n")
    yield tmp_path
    # Settings modules written by a test are imported by --settings; forget them with the directory.
    for module in ("shopapp", "shopcfg"):
        sys.modules.pop(module, None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def comment_of(output: str, key: str) -> str:
    (line,) = [line for line in output.splitlines() if line.strip().startswith(f"{key}:")]
    return line.split("# ", 1)[1]


def test_show_prints_yaml_with_the_source_of_each_value(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_SECRET_KEY", SECRET)
    code, out, err = run(capsys, "config", "show", "--profile", "staging")
    assert (code, err) == (0, "")
    assert out.startswith("# mainspring.config.Settings, profile 'staging'")
    assert comment_of(out, "service_name") == "config/base.yaml:1"
    assert comment_of(out, "format") == "config/staging.yaml:2"
    assert comment_of(out, "secret_key") == "env MAINSPRING_SECRET_KEY"
    assert comment_of(out, "profile") == "argument profile="
    assert comment_of(out, "sink") == "default"
    assert SECRET not in out


def test_yaml_output_is_valid_yaml_of_the_effective_values(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "config", "show")
    data = yaml.safe_load(out)
    assert data["service_name"] == "shop"
    assert data["cors"]["allow_origins"] == ["https://shop.example"]
    assert data["logging"]["levels"] == {"sqlalchemy.engine": "WARNING"}
    assert data["secret_key"] == "**********"
    assert data["logging"]["file"] is None


def test_show_prints_json_with_value_and_source_pairs(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_LOGGING__LEVEL", "ERROR")
    code, out, _ = run(capsys, "config", "show", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["service_name"] == {"value": "shop", "source": "config/base.yaml:1"}
    assert data["logging"]["level"] == {"value": "ERROR", "source": "env MAINSPRING_LOGGING__LEVEL"}
    assert data["logging"]["levels"]["sqlalchemy.engine"]["source"] == "config/base.yaml:6"
    assert data["secret_key"]["value"] == "**********"


def test_config_dir_option_points_at_another_directory(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = project / "deploy"
    other.mkdir()
    (other / "base.yaml").write_text("service_name: elsewhere\n")
    _, out, _ = run(capsys, "config", "show", "--config-dir", str(other), "-f", "json")
    assert json.loads(out)["service_name"] == {"value": "elsewhere", "source": f"{other}/base.yaml:1"}


def test_secret_like_names_and_url_passwords_are_masked(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "shopapp.py").write_text(
        textwrap.dedent(
            """\
            from mainspring.config import Settings

            class ShopSettings(Settings):
                api_token: str = ""
                database_url: str = "sqlite:///x.db"
            """
        )
    )
    monkeypatch.setenv("MAINSPRING_API_TOKEN", SECRET)
    monkeypatch.setenv("MAINSPRING_DATABASE_URL", f"postgresql://shop:{SECRET}@db:5432/shop")
    code, out, err = run(capsys, "config", "show", "--settings", "shopapp:ShopSettings")
    assert (code, err) == (0, "")
    assert SECRET not in out
    data: dict[str, Any] = yaml.safe_load(out)
    assert data["api_token"] == "**********"
    assert data["database_url"] == "postgresql://shop:**********@db:5432/shop"


def test_settings_option_loads_a_subclass_with_its_own_prefix(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "shopcfg.py").write_text(
        textwrap.dedent(
            """\
            from pydantic_settings import SettingsConfigDict
            from mainspring.config import Settings

            class ShopSettings(Settings):
                model_config = SettingsConfigDict(env_prefix="SHOP_")
                max_basket: int = 50
            """
        )
    )
    monkeypatch.setenv("SHOP_MAX_BASKET", "7")
    _, out, _ = run(capsys, "config", "show", "--settings", "shopcfg:ShopSettings", "-f", "json")
    assert json.loads(out)["max_basket"] == {"value": 7, "source": "env SHOP_MAX_BASKET"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Settings", "cannot import settings module 'no_such_module_xyz'"),
        ("json:Nope", "module 'json' has no attribute 'Nope'"),
        ("json:JSONDecoder", "is not a subclass of mainspring.config.Settings"),
        ("just-a-name", "should look like 'package.module:ClassName'"),
    ],
)
def test_bad_settings_option_exits_2_with_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    code, out, err = run(capsys, "config", "show", "--settings", spec)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_unknown_profile_exits_2_with_one_clear_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "config", "show", "--profile", "qa")
    assert code == 2
    assert out == ""
    assert err == (
        "error: unknown profile 'qa' (argument profile=): known profiles are dev, prod, staging, test; "
        "create config/qa.yaml to add it\n"
    )


def test_invalid_configuration_exits_2_listing_every_problem(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_DEBUG", "maybe")
    (project / "config/dev.yaml").write_text("logging:\n  level: LOUD\n")
    code, _, err = run(capsys, "config", "show")
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("error: invalid configuration for profile 'dev' (2 problems)")
    assert any("logging.level" in line and "config/dev.yaml:2" in line for line in lines[1:])
    assert any("debug" in line and "env MAINSPRING_DEBUG" in line for line in lines[1:])


def test_prod_refusal_does_not_print_the_secret(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_SECRET_KEY", "dev-short-key")
    code, _, err = run(capsys, "config", "show", "--profile", "prod")
    assert code == 2
    assert "refuses" in err
    assert "dev-short-key" not in err


def test_show_config_refuses_an_unknown_format(project: Path) -> None:
    with pytest.raises(BadRequestError, match="use yaml or json"):
        show_config(profile=None, output_format="xml", config_dir=None)


def test_demo_rejects_a_port_out_of_range(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--port", "70000")
    assert code == 2
    assert "--port" in err
