"""``mainspring config show``: the effective configuration, where each value came from, secrets masked."""

from __future__ import annotations

import enum
import importlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import EllipsisType
from typing import Annotated, Any

import typer
import yaml

from mainspring.config import Settings, SettingsSources, load_settings_with_sources
from mainspring.config._safety import MASK, looks_secret, mask_url_password
from mainspring.errors import BadRequestError, ConfigError

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)

# Comments line up at this column at most, so one long value does not push every comment away.
_MAX_COMMENT_COLUMN = 56


class OutputFormat(enum.StrEnum):
    """How ``config show`` prints: YAML with ``# source`` comments, or JSON with value/source pairs."""

    YAML = "yaml"
    JSON = "json"


@config_app.command("show")
def _show_command(
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="Profile to load (default: MAINSPRING_PROFILE or dev)."),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.", case_sensitive=False)
    ] = OutputFormat.YAML,
    config_dir: Annotated[
        Path | None,
        typer.Option("--config-dir", help="Directory of base.yaml and <profile>.yaml (default: ./config)."),
    ] = None,
    settings: Annotated[
        str | None,
        typer.Option(
            "--settings", help="Your settings class as module:Class (default: mainspring's Settings)."
        ),
    ] = None,
) -> None:
    """Print the effective configuration with the source of each value; secrets are masked."""
    show_config(
        profile=profile, output_format=output_format.value, config_dir=config_dir, settings_class=settings
    )


def show_config(
    *,
    profile: str | None,
    output_format: str,
    config_dir: Path | None,
    settings_class: str | type[Settings] | None = None,
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | EllipsisType | None = ...,
) -> None:
    """Print the effective configuration with the source of each value, secrets masked.

    ``output_format`` is ``yaml`` (values with ``# source`` comments) or ``json`` (``{"value", "source"}``
    at each leaf). ``settings_class`` is a class or a ``module:Class`` string; ``env`` and ``env_file``
    are passed to :func:`~mainspring.config.load_settings` (default: the process environment, ``./.env``).
    """
    try:
        chosen = OutputFormat(output_format.lower())
    except ValueError:
        raise BadRequestError(f"unknown output format {output_format!r}: use yaml or json") from None
    cls = resolve_settings_class(settings_class)
    settings, sources = load_settings_with_sources(
        cls, profile=profile, config_dir=config_dir, env=env, env_file=env_file
    )
    data = _masked(settings.model_dump(mode="json"), ())
    if chosen is OutputFormat.JSON:
        typer.echo(json.dumps(_with_sources(data, (), sources), indent=2, ensure_ascii=False))
    else:
        # Our own classes live in private modules; name them where users import them from.
        module = "mainspring.config" if cls.__module__.startswith("mainspring.config.") else cls.__module__
        header = f"# {module}.{cls.__qualname__}, profile '{settings.profile}'; secrets masked"
        typer.echo(header + "\n" + render_yaml(data, sources))


def resolve_settings_class(spec: str | type[Settings] | None) -> type[Settings]:
    """Return the settings class named by ``spec`` (``package.module:Class``), or :class:`Settings`."""
    if spec is None:
        return Settings
    if isinstance(spec, type):
        found: object = spec
    else:
        module_name, sep, attribute = spec.partition(":")
        if not sep or not module_name or not attribute:
            raise ConfigError(f"--settings {spec!r} should look like 'package.module:ClassName'")
        # Like `python -m`, look in the current directory too: the service's code usually lives there.
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import settings module '{module_name}': {exc}") from exc
        finally:
            if added:
                sys.path.remove(cwd)
        found = module
        for part in attribute.split("."):
            if not hasattr(found, part):
                raise ConfigError(f"module '{module_name}' has no attribute '{attribute}'")
            found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, Settings)):
        raise ConfigError(f"{spec!r} is not a subclass of mainspring.config.Settings")
    return found


def _masked(node: Any, key: tuple[str, ...]) -> Any:
    """Mask strings under secret-looking names and passwords inside URLs (typed secrets already are)."""
    if isinstance(node, dict):
        return {name: _masked(value, (*key, str(name))) for name, value in node.items()}
    if isinstance(node, list):
        return [_masked(item, key) for item in node]
    if isinstance(node, str):
        return MASK if looks_secret(key) else mask_url_password(node)
    return node


def _with_sources(node: dict[str, Any], key: tuple[str, ...], sources: SettingsSources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in node.items():
        here = (*key, str(name))
        if isinstance(value, dict) and value:
            out[name] = _with_sources(value, here, sources)
        else:
            out[name] = {"value": value, "source": sources.source_of(here)}
    return out


def render_yaml(data: Mapping[str, Any], sources: SettingsSources) -> str:
    """Render ``data`` as YAML with a ``# source`` comment on every value line."""
    lines: list[tuple[str, str | None]] = []
    _yaml_lines(data, (), 0, sources, lines)
    widths = [len(text) for text, comment in lines if comment is not None]
    column = min(max(widths, default=0), _MAX_COMMENT_COLUMN) + 2
    return "\n".join(
        text if comment is None else f"{text.ljust(column - 2)}  # {comment}" for text, comment in lines
    )


def _yaml_lines(
    node: Mapping[str, Any],
    key: tuple[str, ...],
    indent: int,
    sources: SettingsSources,
    lines: list[tuple[str, str | None]],
) -> None:
    for name, value in node.items():
        here = (*key, str(name))
        label = " " * indent + _yaml_scalar(str(name)) + ":"
        if isinstance(value, dict) and value:
            lines.append((label, None))
            _yaml_lines(value, here, indent + 2, sources, lines)
        else:
            lines.append((f"{label} {_yaml_value(value)}", sources.source_of(here)))


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return _yaml_scalar(value)
    # JSON is valid YAML flow style, and keeps lists and mappings on the one line their comment is on.
    return json.dumps(value, ensure_ascii=False)


def _yaml_scalar(text: str) -> str:
    dumped = yaml.safe_dump(text, default_flow_style=True, allow_unicode=True, width=2**31 - 1)
    dumped = dumped.removesuffix("\n").removesuffix("\n...")
    return json.dumps(text, ensure_ascii=False) if "\n" in dumped else dumped
