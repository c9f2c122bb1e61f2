"""``SettingsFactory``: build settings the way the service does, minus the machine's environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from mainspring.config import Settings

__all__ = ["SettingsFactory"]

S = TypeVar("S", bound="Settings")


class SettingsFactory:
    """Build settings for a test: profile ``test``, no environment variables, no ``.env`` file.

    Call it with keyword overrides (``factory(service_name="orders")``, nested sections as dicts) and,
    optionally, a settings class first (``factory(MySettings, ...)``). Configuration files are read from
    :attr:`config_dir`, an empty per-test directory you may write YAML files into, unless ``config_dir=``
    names another; ``env=`` supplies environment variables when a test is about them.
    """

    def __init__(self, make_config_dir: Callable[[], Path]) -> None:
        self._make_config_dir = make_config_dir
        self._config_dir: Path | None = None

    @property
    def config_dir(self) -> Path:
        """The default configuration directory: empty and private to this test (made on first use)."""
        if self._config_dir is None:
            self._config_dir = self._make_config_dir()
        return self._config_dir

    @overload
    def __call__(
        self,
        /,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings: ...

    @overload
    def __call__(
        self,
        cls: type[S],
        /,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> S: ...

    def __call__(
        self,
        cls: type[Settings] | None = None,
        /,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Load ``cls`` (default :class:`mainspring.config.Settings`) for profile ``test``."""
        # Imported here so that loading the pytest plugin never imports the configuration machinery.
        from mainspring.config import Settings, load_settings

        return load_settings(
            Settings if cls is None else cls,
            profile="test",
            config_dir=Path(config_dir) if config_dir is not None else self.config_dir,
            env=dict(env) if env is not None else {},
            env_file=None,
            overrides=overrides,
        )
