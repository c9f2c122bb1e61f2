"""Secret files (``<field>_file``) and masking: secrets never appear in repr, str or error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr
from pydantic_settings import SettingsConfigDict

from mainspring.config import Settings, load_settings, load_settings_with_sources
from mainspring.errors import ConfigError

SECRET = "hunter2-this-is-the-real-secret-value"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


class DatabaseSettings(BaseModel):
    url: str = "sqlite+aiosqlite:///app.db"
    user: str = "app"
    password: SecretStr = SecretStr("")


class WithDatabase(Settings):
    database: DatabaseSettings = DatabaseSettings()


# --- secret files ------------------------------------------------------------------------------------


def test_secret_file_named_by_an_env_variable_is_read_and_stripped(project: Path) -> None:
    write(project / "run/secret_key", f"  {SECRET}\n\n")
    settings, sources = load_settings_with_sources(
        env={"MAINSPRING_SECRET_KEY_FILE": "run/secret_key"}, env_file=None
    )
    assert settings.secret_key.get_secret_value() == SECRET
    assert sources["secret_key"] == "file run/secret_key (named by env MAINSPRING_SECRET_KEY_FILE)"


def test_secret_file_named_in_yaml_is_read(project: Path) -> None:
    key_file = write(project / "run/secret_key", SECRET)
    write(project / "config/base.yaml", f"version: '1'\nsecret_key_file: {key_file}\n")
    settings, sources = load_settings_with_sources(env={}, env_file=None)
    assert settings.secret_key.get_secret_value() == SECRET
    assert sources["secret_key"] == f"file {key_file} (named by config/base.yaml:2)"


def test_nested_secret_file_variable_fills_the_nested_field(project: Path) -> None:
    write(project / "run/db_password", SECRET + "\n")
    settings = load_settings(
        WithDatabase, env={"MAINSPRING_DATABASE__PASSWORD_FILE": "run/db_password"}, env_file=None
    )
    assert settings.database.password.get_secret_value() == SECRET


def test_missing_secret_file_names_the_file_and_who_named_it(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            WithDatabase, env={"MAINSPRING_DATABASE__PASSWORD_FILE": "/run/secrets/nope"}, env_file=None
        )
    (problem,) = info.value.problems
    assert problem.path == "database.password"
    assert "/run/secrets/nope" in problem.reason
    assert problem.source == "env MAINSPRING_DATABASE__PASSWORD_FILE"


def test_secret_file_that_is_a_directory_is_reported(project: Path) -> None:
    (project / "run").mkdir()
    with pytest.raises(ConfigError, match="secret file run cannot be read"):
        load_settings(env={"MAINSPRING_SECRET_KEY_FILE": "run"}, env_file=None)


def test_a_higher_layer_replaces_a_secret_file_without_reading_it(project: Path) -> None:
    write(project / "config/base.yaml", "secret_key_file: /run/secrets/absent\n")
    settings = load_settings(env={"MAINSPRING_SECRET_KEY": SECRET}, env_file=None)
    assert settings.secret_key.get_secret_value() == SECRET


def test_value_and_file_for_the_same_field_in_one_layer_is_refused(project: Path) -> None:
    write(project / "run/key", SECRET)
    write(project / "config/base.yaml", "secret_key: x\nsecret_key_file: run/key\n")
    with pytest.raises(ConfigError, match="set either 'secret_key' or 'secret_key_file'"):
        load_settings(env={}, env_file=None)


def test_secret_file_key_must_be_a_path(project: Path) -> None:
    write(project / "config/base.yaml", "secret_key_file: [a, b]\n")
    with pytest.raises(ConfigError, match="must be the path of a file"):
        load_settings(env={}, env_file=None)


def test_a_real_field_ending_in_file_is_not_a_secret_reference(project: Path) -> None:
    class WithEnvFile(Settings):
        audit_file: str = "audit.log"

    settings = load_settings(WithEnvFile, overrides={"audit_file": "other.log"}, env={}, env_file=None)
    assert settings.audit_file == "other.log"


# --- masking -----------------------------------------------------------------------------------------


def test_repr_and_str_mask_secrets(project: Path) -> None:
    settings = load_settings(
        WithDatabase,
        env={"MAINSPRING_SECRET_KEY": SECRET, "MAINSPRING_DATABASE__PASSWORD": SECRET},
        env_file=None,
    )
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "**********" in repr(settings)


def test_invalid_secret_value_is_masked_in_the_error(project: Path) -> None:
    class Pinned(Settings):
        api_token: int = 0

    with pytest.raises(ConfigError) as info:
        load_settings(Pinned, env={"MAINSPRING_API_TOKEN": SECRET}, env_file=None)
    assert SECRET not in str(info.value)
    assert info.value.problems[0].value == "**********"
    assert info.value.problems[0].source == "env MAINSPRING_API_TOKEN"


def test_secret_typed_field_is_masked_whatever_its_name(project: Path) -> None:
    class Opaque(Settings):
        thing: SecretStr = SecretStr("x")

    write(project / "config/base.yaml", "thing: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Opaque, env={}, env_file=None)
    assert info.value.problems[0].value == "**********"


def test_misspelt_secret_key_is_still_masked(project: Path) -> None:
    write(project / "config/base.yaml", f"database:\n  pasword: {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(WithDatabase, env={}, env_file=None)
    problem = info.value.problems[0]
    assert "did you mean 'password'" in problem.reason
    assert problem.value == "**********"
    assert SECRET not in str(info.value)


def test_password_inside_a_url_is_masked_in_the_error(project: Path) -> None:
    class WithPort(Settings):
        port: int = 1

    with pytest.raises(ConfigError) as info:
        load_settings(WithPort, overrides={"port": f"postgresql://app:{SECRET}@db/x"}, env={}, env_file=None)
    assert SECRET not in str(info.value)
    assert "postgresql://app:**********@db/x" in str(info.value)


def test_own_prefix_secret_file_variable(project: Path) -> None:
    class Orders(Settings):
        model_config = SettingsConfigDict(env_prefix="ORDERS_")

    write(project / "key", SECRET)
    settings = load_settings(Orders, env={"ORDERS_SECRET_KEY_FILE": "key"}, env_file=None)
    assert settings.secret_key.get_secret_value() == SECRET
