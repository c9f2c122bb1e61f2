"""A subclass's own section defaults survive files and variables that set other keys of the section."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mainspring.config import CacheSettings, MessagingSettings, Settings, load_settings


class ShopSettings(Settings):
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings(namespace="shop", default_ttl=60.0))
    messaging: MessagingSettings = Field(default_factory=lambda: MessagingSettings(source="shop-service"))


def test_section_defaults_of_a_subclass_survive_a_partial_override(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("messaging:\n  drain_timeout: 3\n")
    settings = load_settings(
        ShopSettings,
        profile="dev",
        config_dir=tmp_path,
        env={"MAINSPRING_CACHE__URL": "redis://127.0.0.1:6379/0"},
        env_file=None,
    )
    assert settings.cache.url == "redis://127.0.0.1:6379/0"
    assert settings.cache.namespace == "shop"  # not the CacheSettings default "mainspring"
    assert settings.cache.default_ttl == 60.0
    assert settings.messaging.source == "shop-service"
    assert settings.messaging.drain_timeout == 3.0


def test_loaded_values_still_win_over_the_subclass_defaults(tmp_path: Path) -> None:
    settings = load_settings(
        ShopSettings,
        profile="dev",
        config_dir=tmp_path,
        env={"MAINSPRING_CACHE__NAMESPACE": "other"},
        env_file=None,
    )
    assert settings.cache.namespace == "other"
    assert settings.cache.default_ttl == 60.0
