"""``load_settings``: layer defaults, YAML files, ``.env``, environment and overrides into one Settings.

This module is the only place in mainspring that reads the process environment.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

import pydantic
from dotenv.parser import parse_stream
from typing_extensions import TypeVar

from mainspring.config import _schema
from mainspring.config._layers import (
    Key,
    Layer,
    apply_secret_files,
    env_layer,
    overrides_layer,
    read_secret_files,
)
from mainspring.config._safety import MASK, describe_value, looks_secret
from mainspring.config._settings import BUILTIN_PROFILES, Settings
from mainspring.config._sources import SettingsSources
from mainspring.config._yaml import read_yaml
from mainspring.errors import ConfigError, ConfigProblem

# PEP 696 default: ``load_settings()`` without a class is typed as returning ``Settings``.
SettingsT = TypeVar("SettingsT", bound=Settings, default=Settings)

#: ``env_file`` value meaning "``.env`` in the current directory, if there is one".
EnvFile = str | os.PathLike[str] | None | EllipsisType

_DEFAULT_PROFILE = "dev"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MAX_LISTED_FIELDS = 12


@dataclass(slots=True)
class _Collected:
    """Problems found while reading layers; ``fatal`` ones mean a whole file could not be used."""

    fatal: list[ConfigProblem] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    dropped: set[Key] = field(default_factory=set)

    def add(self, problems: Iterable[ConfigProblem]) -> None:
        for problem in problems:
            self.problems.append(problem)
            if problem.path:
                self.dropped.add(tuple(problem.path.split(".")))


def load_settings(
    cls: type[SettingsT] = Settings,  # type: ignore[assignment]  # mypy rejects TypeVar defaults here
    *,
    profile: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: EnvFile = ...,
) -> SettingsT:
    """Load ``cls`` from every layer, lowest first: defaults, ``base.yaml``, ``<profile>.yaml``,
    ``.env``, environment variables, ``overrides``.

    ``profile`` defaults to ``MAINSPRING_PROFILE`` (or ``<env_prefix>PROFILE``), then ``dev``.
    ``config_dir`` defaults to ``./config``; a missing directory means no files. ``env`` replaces
    ``os.environ``. ``overrides`` is a nested mapping whose top-level keys may be dotted
    (``{"logging.level": "DEBUG"}``). ``env_file=None`` skips ``.env``; the default reads ``./.env``
    when it exists, and an explicit path must exist.

    Raises :class:`~mainspring.errors.ConfigError` listing every problem found, with its source.
    """
    settings, _ = load_settings_with_sources(
        cls, profile=profile, config_dir=config_dir, env=env, overrides=overrides, env_file=env_file
    )
    return settings


def load_settings_with_sources(
    cls: type[SettingsT] = Settings,  # type: ignore[assignment]  # as in load_settings
    *,
    profile: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: EnvFile = ...,
) -> tuple[SettingsT, SettingsSources]:
    """Like :func:`load_settings`, and also return where each effective value came from."""
    environ: Mapping[str, str] = os.environ if env is None else env
    prefix = str(cls.model_config.get("env_prefix") or "")
    collected = _Collected()

    dotenv = _read_dotenv(env_file, collected)
    name, chosen_by = _choose_profile(profile, environ, dotenv, prefix)
    directory = Path("config") if config_dir is None else Path(config_dir)
    files = _config_files(directory, name, chosen_by, collected)

    layers: list[Layer] = []
    for path in files:
        result = read_yaml(path, str(path), environ)
        if result.layer is None:
            collected.fatal.extend(result.problems)
            continue
        collected.problems.extend(result.problems)
        collected.dropped.update(result.dropped)
        layers.append(result.layer)
    for entries in (dotenv, [(k, v, f"env {k}") for k, v in environ.items()]):
        layer, problems = env_layer(cls, entries, prefix)
        collected.add(problems)
        layers.append(layer)
    if overrides:
        layers.append(overrides_layer(overrides))

    merged = Layer()
    for layer in layers:
        _reject_profile_key(layer, collected)
        collected.add(apply_secret_files(layer, cls))
        merged.merge(layer)
    secret_problems, failed = read_secret_files(merged)
    collected.problems.extend(secret_problems)
    collected.dropped.update(failed)
    merged.put(("profile",), name, chosen_by)

    if collected.fatal:
        raise ConfigError(
            f"configuration for profile '{name}' cannot be read; fix the files below",
            problems=[*collected.fatal, *collected.problems],
            details={"profile": name},
        )
    settings: SettingsT | None = None
    problems = list(collected.problems)
    problems.extend(_unknown_section_keys(cls, merged, merged.data, ()))
    try:
        settings = cls.model_validate(with_class_defaults(cls, merged.data))
    except pydantic.ValidationError as exc:
        problems.extend(_translate(exc, cls, merged, prefix, collected.dropped))
    if problems or settings is None:
        count = len(problems)
        raise ConfigError(
            f"invalid configuration for profile '{name}' ({count} problem{'s' if count != 1 else ''}); "
            "fix the settings below and start again",
            problems=problems,
            details={"profile": name},
        )
    if settings.is_production:
        unsafe = [_complete(p, cls, merged) for p in settings.production_problems()]
        if unsafe:
            raise ConfigError(
                f"profile '{name}' refuses {len(unsafe)} unsafe setting{'s' if len(unsafe) != 1 else ''}; "
                "fix them, or use a non-production profile for local work",
                problems=unsafe,
                details={"profile": name},
            )
    return settings, SettingsSources(settings.model_dump(mode="python"), merged)


def _read_dotenv(env_file: EnvFile, collected: _Collected) -> list[tuple[str, str, str]]:
    """Return ``(name, value, source)`` for each assignment in the env file, or ``[]``."""
    if env_file is None:
        return []
    if isinstance(env_file, EllipsisType):
        path = Path(".env")
        if not path.is_file():
            return []
    else:
        path = Path(env_file)
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        collected.fatal.append(ConfigProblem("", f"cannot read the env file: {reason}", source=display))
        return []
    entries: list[tuple[str, str, str]] = []
    for binding in parse_stream(io.StringIO(text)):
        where = f"{display}:{binding.original.line}"
        if binding.error:
            collected.problems.append(
                ConfigProblem("", "cannot parse this line; write NAME=value", source=where)
            )
        elif binding.key is not None and binding.value is not None:
            entries.append((binding.key, binding.value, where))
    return entries


def _choose_profile(
    profile: str | None, environ: Mapping[str, str], dotenv: list[tuple[str, str, str]], prefix: str
) -> tuple[str, str]:
    """Return the profile name and how it was chosen (a source string)."""
    if profile is not None:
        name, chosen_by = profile, "argument profile="
    else:
        name, chosen_by = _DEFAULT_PROFILE, "default"
        # The class's own prefix first; the real environment before the .env file.
        wanted = list(dict.fromkeys([f"{prefix}PROFILE".lower(), "mainspring_profile"]))
        sources = [[(k, v, f"env {k}") for k, v in environ.items()], dotenv]
        hits = [
            (value, where)
            for entries in sources
            for candidate in wanted
            for key, value, where in entries
            if key.lower() == candidate and value  # an empty variable counts as unset
        ]
        if hits:
            name, chosen_by = hits[0]
    if not _PROFILE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid profile name {name!r} ({chosen_by}): use letters, digits, '-' and '_'",
            details={"profile": name},
        )
    return name, chosen_by


def _config_files(directory: Path, name: str, chosen_by: str, collected: _Collected) -> list[Path]:
    """Return the YAML files to read for profile ``name``; raise if the profile is unknown."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"config directory {directory} is not a directory; point config_dir at one")
    found = sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
    known = sorted({*BUILTIN_PROFILES, *(stem for stem in found if stem != "base")})
    if name not in known:
        raise ConfigError(
            f"unknown profile '{name}' ({chosen_by}): known profiles are {', '.join(known)}; "
            f"create {directory / (name + '.yaml')} to add it",
            details={"profile": name, "known_profiles": known},
        )
    for stem in ("base", name):
        misnamed = directory / f"{stem}.yml"
        if misnamed.exists():
            collected.fatal.append(
                ConfigProblem(
                    "", f"settings files end in .yaml; rename it to {stem}.yaml", source=str(misnamed)
                )
            )
    return [p for p in (directory / "base.yaml", directory / f"{name}.yaml") if p.is_file()]


def _reject_profile_key(layer: Layer, collected: _Collected) -> None:
    if "profile" not in layer.data:
        return
    source = layer.source_of(("profile",)) or "overrides"
    collected.add(
        [
            ConfigProblem(
                "profile",
                "the profile is chosen with profile= or MAINSPRING_PROFILE, not set in settings",
                describe_value(layer.data.pop("profile"), secret=False),
                source,
            )
        ]
    )


def _translate(
    exc: pydantic.ValidationError, cls: type[Settings], merged: Layer, prefix: str, dropped: set[Key]
) -> list[ConfigProblem]:
    """Turn pydantic's errors into problems with a source each and masked values.

    A value dropped because of an earlier problem (a missing variable, an unreadable secret file) is
    not reported a second time as missing.
    """
    problems: list[ConfigProblem] = []
    for error in exc.errors(include_url=False):
        key = tuple(str(part) for part in error["loc"])
        path = ".".join(key)
        secret = looks_secret(key) or _schema.is_secret_field(cls, key)
        source = merged.source_of(key)
        kind = error["type"]
        if kind == "missing":
            if any(key[: len(d)] == d for d in dropped):
                continue
            env_name = prefix + "__".join(key).upper()
            problems.append(
                ConfigProblem(path, f"is required; set it in a config file or with {env_name}", None, source)
            )
            continue
        if kind == "extra_forbidden":
            problems.append(_unknown_key_problem(cls, key, error.get("input"), source))
            continue
        reason = str(error["msg"]).removeprefix("Value error, ")
        value = describe_value(error.get("input"), secret=secret)
        problems.append(ConfigProblem(path, reason, value, source))
    return problems


def _unknown_section_keys(
    cls: type[Settings], merged: Layer, node: dict[str, Any], prefix: Key
) -> list[ConfigProblem]:
    """Report unknown keys of sections whose model leaves ``extra`` unset (pydantic would ignore them).

    Sections that say ``extra="forbid"`` are checked by pydantic; ``"ignore"`` or ``"allow"`` set on
    purpose is respected.
    """
    problems: list[ConfigProblem] = []
    model = _schema.model_at(cls, prefix)
    if model is None:
        return problems
    accepted = set(model.model_fields)
    accepted.update(f.alias for f in model.model_fields.values() if f.alias)
    for name, value in node.items():
        key = (*prefix, name)
        if name not in accepted:
            if model.model_config.get("extra") is None:
                problems.append(_unknown_key_problem(cls, key, value, merged.source_of(key)))
        elif isinstance(value, dict):
            problems.extend(_unknown_section_keys(cls, merged, value, key))
    return problems


def _unknown_key_problem(cls: type[Settings], key: Key, value: object, source: str | None) -> ConfigProblem:
    fields = _schema.field_names(cls, key[:-1])
    close = difflib.get_close_matches(key[-1], fields, n=1)
    secret = looks_secret(key) or bool(close and looks_secret(close))
    if close:
        reason = f"unknown setting; did you mean '{close[0]}'?"
    elif fields:
        listed = ", ".join(fields[:_MAX_LISTED_FIELDS])
        reason = f"unknown setting; known here: {listed}" + (
            ", ..." if len(fields) > _MAX_LISTED_FIELDS else ""
        )
    else:
        reason = "unknown setting"
    return ConfigProblem(".".join(key), reason, describe_value(value, secret=secret), source)


def _complete(problem: ConfigProblem, cls: type[Settings], merged: Layer) -> ConfigProblem:
    """Fill in the source of a production problem and mask its value when the setting is secret."""
    key = tuple(problem.path.split(".")) if problem.path else ()
    value = problem.value
    if value is not None and (looks_secret(key) or _schema.is_secret_field(cls, key)):
        value = MASK
    source = problem.source or merged.source_of(key, leaves_only=True) or "default"
    return ConfigProblem(problem.path, problem.reason, value, source)


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = _deep_merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return out


def with_class_defaults(model: type[pydantic.BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """Put a settings class's own section defaults under the loaded values of those sections.

    A subclass may declare ``cache: CacheSettings = Field(default_factory=lambda:
    CacheSettings(namespace="orders"))``. When a file or an environment variable then sets another key
    of that section, the section is built from the loaded keys alone and the subclass's
    ``namespace`` would be lost; merging the default's explicitly set values underneath keeps it.
    """
    out = dict(data)
    for name, info in model.model_fields.items():
        key = info.alias or name
        loaded = out.get(key)
        if not isinstance(loaded, dict):
            continue
        default = info.get_default(call_default_factory=True)
        if not isinstance(default, pydantic.BaseModel):
            continue
        explicit = default.model_dump(exclude_unset=True, by_alias=True)
        out[key] = with_class_defaults(type(default), _deep_merge(explicit, loaded))
    return out
