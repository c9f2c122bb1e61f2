"""The demo's settings: :class:`mainspring.config.Settings` with embedded defaults and a ``demo`` section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator

from mainspring.config import Settings

__all__ = ["DEMO_DEFAULTS", "DemoSection", "DemoSettings"]

#: What the demo runs with when nothing else is configured: no servers needed.
DEMO_DEFAULTS: dict[str, Any] = {
    "service_name": "mainspring-demo",
    "database": {"url": "sqlite+aiosqlite:///mainspring-demo.db"},
    "cache": {"url": "memory://", "namespace": "demo"},
    "messaging": {"url": "memory://demo", "source": "mainspring-demo", "fetch_timeout": 0.2},
    "logging": {"format": "console"},
    "tracing": {"enabled": True, "exporter": "console"},
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


class DemoSection(BaseModel):
    """Knobs of the orders demo itself."""

    model_config = {"extra": "forbid"}

    login_rate: str = Field(default="5/minute", description="login attempts per client address")
    access_ttl: float = Field(default=900.0, gt=0, description="seconds an access token lives")
    refresh_ttl: float = Field(default=14 * 86400.0, gt=0, description="seconds a refresh token lives")
    order_cache_ttl: float = Field(default=60.0, gt=0, description="seconds an order read stays cached")
    admin_email: str = Field(default="admin@example.com", min_length=3)
    admin_password: SecretStr | None = Field(
        default=None, description="the seeded admin's password; a random one is made and printed when unset"
    )
    rate_limit_url: str | None = Field(
        default=None,
        description="rate limiter store; default: the Redis of cache.url when it has one, else memory://",
    )


class DemoSettings(Settings):
    """The orders demo's settings: the base sections with demo defaults, plus ``demo``.

    The defaults (:data:`DEMO_DEFAULTS`) are merged *under* whatever is given, key by key, so
    ``MAINSPRING_CACHE__URL=memory+redis://...`` changes the URL and keeps the demo's cache namespace.
    """

    demo: DemoSection = Field(default_factory=DemoSection)

    @model_validator(mode="before")
    @classmethod
    def _demo_defaults(cls, data: Any) -> Any:
        # A section default on the class would be replaced whole by a partial section from the
        # environment; merging here keeps the demo's other keys of that section.
        if isinstance(data, dict):
            return _merge(DEMO_DEFAULTS, data)
        return data
