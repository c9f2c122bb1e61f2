"""``settings_factory``: settings for profile ``test``, shielded from the machine's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainspring.config import Settings
from mainspring.errors import ConfigError
from mainspring.testing import SettingsFactory


class OrdersSettings(Settings):
    max_basket: int = 50


def test_default_is_mainspring_settings_for_the_test_profile(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    assert type(settings) is Settings
    assert settings.profile == "test"
    assert settings.service_name == "mainspring-service"


def test_keyword_overrides_are_applied_including_nested_and_dotted_keys(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(service_name="orders", cors={"allow_credentials": True}, debug=True)
    assert settings.service_name == "orders"
    assert settings.cors.allow_credentials is True
    assert settings.debug is True
    dotted = settings_factory(**{"cors.allow_origins": ["https://shop.example"]})
    assert dotted.cors.allow_origins == ["https://shop.example"]


def test_a_settings_subclass_is_built_when_passed_first(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(OrdersSettings, max_basket=3)
    assert isinstance(settings, OrdersSettings)
    assert settings.max_basket == 3


def test_environment_dotenv_and_working_directory_config_are_ignored(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAINSPRING_SERVICE_NAME", "from-environment")
    monkeypatch.setenv("MAINSPRING_PROFILE", "prod")
    (tmp_path / ".env").write_text("MAINSPRING_VERSION=9.9.9\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "test.yaml").write_text("debug: true\n")
    monkeypatch.chdir(tmp_path)
    settings = settings_factory()
    assert settings.profile == "test"
    assert settings.service_name == "mainspring-service"
    assert settings.version == "0.0.0"
    assert settings.debug is False


def test_config_dir_starts_empty_and_its_files_are_read(settings_factory: SettingsFactory) -> None:
    assert list(settings_factory.config_dir.iterdir()) == []
    (settings_factory.config_dir / "base.yaml").write_text("service_name: from-base\nversion: 1.0.0\n")
    (settings_factory.config_dir / "test.yaml").write_text("version: 2.0.0\n")
    settings = settings_factory(debug=True)
    assert (settings.service_name, settings.version, settings.debug) == ("from-base", "2.0.0", True)


def test_config_dir_is_outside_the_tests_tmp_path(settings_factory: SettingsFactory, tmp_path: Path) -> None:
    # So a test that inspects tmp_path does not find the factory's directory there.
    assert not settings_factory.config_dir.is_relative_to(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_explicit_config_dir_and_env_are_used(settings_factory: SettingsFactory, tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("service_name: explicit\n")
    settings = settings_factory(config_dir=tmp_path, env={"MAINSPRING_VERSION": "3.1.4"})
    assert settings.service_name == "explicit"
    assert settings.version == "3.1.4"


def test_invalid_override_raises_config_error_naming_the_field(settings_factory: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match="max_basket"):
        settings_factory(OrdersSettings, max_basket="many")
    with pytest.raises(ConfigError, match="service_nam"):
        settings_factory(service_nam="typo")
