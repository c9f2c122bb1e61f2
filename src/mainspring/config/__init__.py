"""Layered, validated settings: defaults, YAML per profile, ``.env``, environment and overrides.

Subclass :class:`Settings`, then build it with :func:`load_settings`::

    from mainspring.config import Settings, load_settings

    class OrdersSettings(Settings):
        max_batch: int = 100

    settings = load_settings(OrdersSettings, profile="prod")

Every problem is reported at once in a :class:`~mainspring.errors.ConfigError`, each with the file and
line or the variable it came from; secrets are masked everywhere. See ``docs/config.md``.
"""

from mainspring.config._loader import load_settings, load_settings_with_sources
from mainspring.config._sections import (
    CacheSettings,
    DatabaseSettings,
    DatabaseTLS,
    HttpClientSettings,
    LogFileSettings,
    LoggingSettings,
    MessagingSettings,
    TracingSettings,
)
from mainspring.config._settings import BUILTIN_PROFILES, CorsSettings, Settings, SupportsProductionCheck
from mainspring.config._sources import SettingsSources

__all__ = [
    "BUILTIN_PROFILES",
    "CacheSettings",
    "CorsSettings",
    "DatabaseSettings",
    "DatabaseTLS",
    "HttpClientSettings",
    "LogFileSettings",
    "LoggingSettings",
    "MessagingSettings",
    "Settings",
    "SettingsSources",
    "SupportsProductionCheck",
    "TracingSettings",
    "load_settings",
    "load_settings_with_sources",
]
