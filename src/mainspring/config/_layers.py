"""Configuration layers: nested data plus where each value came from, merged lowest first.

A layer maps settings paths to values and to a source string (``config/base.yaml:3``,
``env MAINSPRING_DEBUG``, ``.env:2``, ``overrides``). ``<field>_file`` keys become :class:`FileRef`
values, read once after all layers are merged so an overridden secret file is never opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mainspring.config import _schema
from mainspring.errors import ConfigProblem

Key = tuple[str, ...]

#: Secret files are small; a bigger one is a wrong path (a log, a device), not a secret.
_MAX_SECRET_FILE_BYTES = 64 * 1024
_FILE_SUFFIX = "_file"


@dataclass(frozen=True, slots=True)
class FileRef:
    """A value to be read from a file (a Docker or Kubernetes secret)."""

    path: str
    origin: str


@dataclass(slots=True)
class Layer:
    """Nested settings data with the source of every leaf and of every section."""

    data: dict[str, Any] = field(default_factory=dict)
    leaves: dict[Key, str] = field(default_factory=dict)
    sections: dict[Key, str] = field(default_factory=dict)

    def put(self, key: Key, value: Any, source: str) -> None:
        """Set ``value`` at ``key``, creating sections on the way; the source covers all of ``value``."""
        node = self.data
        for depth, part in enumerate(key[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
                self._forget(key[: depth + 1])
                self.sections[key[: depth + 1]] = source
            node = child
        self._forget(key)
        node[key[-1]] = value
        self._record(key, value, source)

    def _record(self, key: Key, value: Any, source: str) -> None:
        if isinstance(value, dict):
            self.sections[key] = source
            for name, child in value.items():
                self._record((*key, str(name)), child, source)
        else:
            self.leaves[key] = source

    def _forget(self, key: Key) -> None:
        """Drop the sources of ``key`` and of everything below it."""
        size = len(key)
        for table in (self.leaves, self.sections):
            for old in [k for k in table if k[:size] == key]:
                del table[old]

    def merge(self, upper: Layer) -> None:
        """Lay ``upper`` over this layer: mappings merge key by key, anything else replaces."""
        self._merge_into(self.data, upper.data, (), upper)

    def _merge_into(self, target: dict[str, Any], data: Mapping[str, Any], prefix: Key, upper: Layer) -> None:
        for name, value in data.items():
            key = (*prefix, name)
            current = target.get(name)
            if isinstance(value, dict) and isinstance(current, dict):
                if key in upper.sections:
                    self.sections[key] = upper.sections[key]
                self._merge_into(current, value, key, upper)
                continue
            # Scanning the tables for descendants is only needed when there can be any.
            if isinstance(current, dict | list):
                self._forget(key)
            else:
                self.leaves.pop(key, None)
                self.sections.pop(key, None)
            target[name] = _copy(value)
            if isinstance(value, dict | list):
                size = len(key)
                for table, mine in ((upper.leaves, self.leaves), (upper.sections, self.sections)):
                    for k, source in table.items():
                        if k[:size] == key:
                            mine[k] = source
            else:
                for table, mine in ((upper.leaves, self.leaves), (upper.sections, self.sections)):
                    if key in table:
                        mine[key] = table[key]

    def source_of(self, key: Iterable[str], *, leaves_only: bool = False) -> str | None:
        """Return the source of ``key`` or of its nearest recorded ancestor."""
        parts = tuple(key)
        tables = (self.leaves,) if leaves_only else (self.leaves, self.sections)
        for end in range(len(parts), 0, -1):
            for table in tables:
                found = table.get(parts[:end])
                if found is not None:
                    return found
        return None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def secret_file_name(model: type[BaseModel], parent: Key, name: str) -> str | None:
    """Return the field that ``name`` (``password_file``) fills from a file, or ``None``."""
    fields = _schema.field_names(model, parent)
    if name in fields or not name.endswith(_FILE_SUFFIX):
        return None
    target = name[: -len(_FILE_SUFFIX)]
    return target if target in fields else None


def apply_secret_files(layer: Layer, model: type[BaseModel]) -> list[ConfigProblem]:
    """Turn every ``<field>_file`` key of ``layer`` into a :class:`FileRef` at ``<field>``."""
    problems: list[ConfigProblem] = []
    _walk_secret_files(layer, model, layer.data, (), problems)
    return problems


def _walk_secret_files(
    layer: Layer, model: type[BaseModel], node: dict[str, Any], prefix: Key, problems: list[ConfigProblem]
) -> None:
    for name in list(node):
        value = node[name]
        key = (*prefix, name)
        if isinstance(value, dict):
            if _schema.model_at(model, key) is not None:
                _walk_secret_files(layer, model, value, key, problems)
            continue
        target = secret_file_name(model, prefix, name)
        if target is None:
            continue
        origin = layer.source_of(key) or "overrides"
        if target in node:
            problems.append(
                ConfigProblem(
                    ".".join((*prefix, target)),
                    f"set either '{target}' or '{name}', not both",
                    source=origin,
                )
            )
            continue
        if not isinstance(value, str | Path):
            problems.append(ConfigProblem(".".join(key), "must be the path of a file", repr(value), origin))
            continue
        del node[name]
        layer._forget(key)
        layer.put((*prefix, target), FileRef(str(value), origin), origin)


def read_secret_files(layer: Layer) -> tuple[list[ConfigProblem], set[Key]]:
    """Replace every :class:`FileRef` in ``layer`` by the stripped file contents.

    Returns the problems and the keys that could not be read (their values are removed).
    """
    problems: list[ConfigProblem] = []
    failed: set[Key] = set()
    cache: dict[str, str | None] = {}

    def visit(node: dict[str, Any], prefix: Key) -> None:
        for name in list(node):
            value = node[name]
            key = (*prefix, name)
            if isinstance(value, dict):
                visit(value, key)
            elif isinstance(value, FileRef):
                if value.path not in cache:
                    cache[value.path] = _read_secret(value, ".".join(key), problems)
                contents = cache[value.path]
                if contents is None:
                    del node[name]
                    failed.add(key)
                else:
                    node[name] = contents
                    layer.leaves[key] = f"file {value.path} (named by {value.origin})"

    visit(layer.data, ())
    return problems, failed


def _read_secret(ref: FileRef, path: str, problems: list[ConfigProblem]) -> str | None:
    def problem(reason: str) -> None:
        problems.append(ConfigProblem(path, f"secret file {ref.path} {reason}", source=ref.origin))

    try:
        with open(ref.path, "rb") as handle:
            raw = handle.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        problem(f"cannot be read ({exc.strerror or type(exc).__name__}); mount the secret or fix the path")
        return None
    if len(raw) > _MAX_SECRET_FILE_BYTES:
        problem(f"is larger than {_MAX_SECRET_FILE_BYTES} bytes; is this the right file?")
        return None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        problem("is not UTF-8 text")
        return None


def env_layer(
    model: type[BaseModel], entries: Iterable[tuple[str, str, str]], prefix: str
) -> tuple[Layer, list[ConfigProblem]]:
    """Build a layer from ``(name, value, source)`` variables that start with ``prefix``.

    ``__`` separates nesting levels (``MAINSPRING_LOGGING__LEVEL``). Variables whose first part is not a
    field are ignored: they belong to other tools (``MAINSPRING_PROFILE`` is read by the loader).
    List, mapping and section fields take JSON.
    """
    layer = Layer()
    problems: list[ConfigProblem] = []
    prefix_lower = prefix.lower()
    found: list[tuple[Key, str, str, str]] = []
    for name, value, source in entries:
        if not name.lower().startswith(prefix_lower):
            continue
        parts = name[len(prefix) :].lower().split("__")
        top = parts[0]
        if top not in model.model_fields and secret_file_name(model, (), top) is None:
            continue
        if top == "profile" and len(parts) == 1:
            continue
        if any(not part for part in parts):
            problems.append(
                ConfigProblem(
                    ".".join(parts),
                    f"malformed variable name {name}: use a single '__' between levels",
                    source=source,
                )
            )
            continue
        found.append((tuple(parts), name, value, source))
    # Shallow first, so MAINSPRING_CORS='{...}' is refined by MAINSPRING_CORS__ALLOW_CREDENTIALS.
    for key, _name, value, source in sorted(found, key=lambda item: (len(item[0]), item[1])):
        parsed: Any = value
        if _schema.is_structured(model, key) and secret_file_name(model, key[:-1], key[-1]) is None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(
                    ConfigProblem(
                        ".".join(key),
                        f"is not valid JSON ({exc.msg} at column {exc.colno}); "
                        'list and mapping settings take JSON in variables, e.g. \'["a", "b"]\'',
                        source=source,
                    )
                )
                continue
        layer.put(key, parsed, source)
    return layer, problems


def overrides_layer(overrides: Mapping[str, Any]) -> Layer:
    """Build the layer of explicit overrides; top-level keys may be dotted (``"logging.level"``)."""
    layer = Layer()
    for name, value in overrides.items():
        # Merged one by one, so {"logging.level": ..., "logging": {...}} combine instead of replacing.
        single = Layer()
        single.put(tuple(str(name).split(".")), _plain(value), "overrides")
        layer.merge(single)
    return layer


def _plain(value: Any) -> Any:
    """Turn nested mappings into dicts so they merge with the layers below."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
