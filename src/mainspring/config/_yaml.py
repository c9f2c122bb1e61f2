"""Reading one YAML settings file into a :class:`~mainspring.config._layers.Layer` with line numbers.

The document is composed into nodes (which carry their position) and converted by hand, so each key
gets a ``file:line`` source, duplicate keys are reported instead of silently dropped, and ``${VAR}``
references are expanded in string values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mainspring.config._interpolate import InterpolationError, expand
from mainspring.config._layers import Key, Layer
from mainspring.errors import ConfigProblem

_STR_TAG = "tag:yaml.org,2002:str"
# libyaml parses about ten times faster and keeps the same node marks; PyYAML falls back without it.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(slots=True)
class YamlResult:
    """The layer read from one file; ``layer`` is ``None`` when the file as a whole is unusable."""

    layer: Layer | None
    problems: list[ConfigProblem] = field(default_factory=list)
    #: Keys whose value was dropped because of a problem (a missing variable, a duplicate key...).
    dropped: set[Key] = field(default_factory=set)


def read_yaml(path: Path, display: str, env: Mapping[str, str]) -> YamlResult:
    """Read ``path`` (shown as ``display`` in sources) and expand references from ``env``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return YamlResult(None, [ConfigProblem("", f"cannot read the file: {reason}", source=display)])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return _Converter(loader, display, env).document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark is not None else display
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        return YamlResult(None, [ConfigProblem("", f"invalid YAML: {what}", source=where)])
    except yaml.YAMLError as exc:
        return YamlResult(None, [ConfigProblem("", f"invalid YAML: {exc}", source=display)])
    finally:
        loader.dispose()


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, display: str, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.display = display
        self.env = env
        self.layer = Layer()
        self.result = YamlResult(self.layer)

    def where(self, node: yaml.Node) -> str:
        return f"{self.display}:{node.start_mark.line + 1}"

    def document(self, node: yaml.Node | None) -> YamlResult:
        if node is None:  # an empty file configures nothing
            return self.result
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            reason = f"the top level must be a mapping of settings (key: value), not {kind}"
            return YamlResult(None, [ConfigProblem("", reason, source=self.where(node))])
        self.layer.data = self.mapping(node, ())
        return self.result

    def problem(self, key: Key, reason: str, node: yaml.Node) -> None:
        self.result.problems.append(ConfigProblem(".".join(key), reason, source=self.where(node)))
        self.result.dropped.add(key)

    def mapping(self, node: yaml.MappingNode, prefix: Key) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # resolves '<<' merge keys
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(prefix, "keys must be plain names, not lists or mappings", key_node)
                continue
            name = str(key_node.value)
            key = (*prefix, name)
            line = key_node.start_mark.line + 1
            if name in seen:
                self.problem(key, f"duplicate key (first at line {seen[name]}); keep one of them", key_node)
                continue
            seen[name] = line
            before = len(self.result.problems)
            value = self.value(value_node, key)
            if len(self.result.problems) > before:
                self.result.dropped.add(key)
                continue
            out[name] = value
            source = f"{self.display}:{line}"
            # An empty mapping is a section too: the defaults below it stay "default".
            if isinstance(value, dict):
                self.layer.sections[key] = source
            else:
                self.layer.leaves[key] = source
        return out

    def value(self, node: yaml.Node, key: Key) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, key)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, (*key, str(index))) for index, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and node.tag == _STR_TAG:
            try:
                return expand(value, self.env)
            except InterpolationError as exc:
                for reason in exc.reasons:
                    self.problem(key, reason, node)
        return value
