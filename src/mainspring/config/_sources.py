"""Where each effective setting came from, for ``mainspring config show`` and for error reports."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mainspring.config._layers import Key, Layer

#: Source of a value no layer set.
DEFAULT_SOURCE = "default"


class SettingsSources(Mapping[str, str]):
    """A read-only mapping from each effective setting's dotted path to its source.

    Sources read ``default``, ``config/base.yaml:3``, ``.env:2``, ``env MAINSPRING_LOGGING__LEVEL``,
    ``overrides``, ``file /run/secrets/key (named by env MAINSPRING_SECRET_KEY_FILE)``, or for
    ``profile`` how the profile was chosen. Lists are one entry; mappings have one entry per key.
    """

    def __init__(self, effective: Mapping[str, Any], merged: Layer) -> None:
        self._merged = merged
        self._by_key: dict[Key, str] = {}
        self._collect(effective, ())
        self._by_dotted = {".".join(key): source for key, source in self._by_key.items()}

    def _collect(self, node: Mapping[str, Any], prefix: Key) -> None:
        for name, value in node.items():
            key = (*prefix, str(name))
            if isinstance(value, Mapping) and value:
                self._collect(value, key)
            else:
                self._by_key[key] = self._merged.source_of(key, leaves_only=True) or DEFAULT_SOURCE

    def __getitem__(self, path: str) -> str:
        return self._by_dotted[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_dotted)

    def __len__(self) -> int:
        return len(self._by_dotted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._by_dotted!r})"

    def source_of(self, path: str | Sequence[str]) -> str:
        """Return the source of ``path`` (dotted or a sequence of keys), looking up through lists."""
        if isinstance(path, str):
            if path in self._by_dotted:
                return self._by_dotted[path]
            key: Key = tuple(path.split("."))
        else:
            key = tuple(str(part) for part in path)
        if key in self._by_key:
            return self._by_key[key]
        return self._merged.source_of(key, leaves_only=True) or DEFAULT_SOURCE
