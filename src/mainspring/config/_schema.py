"""Questions the loader asks about a settings class: which fields exist at a path, which are secret.

Only the static shape of the pydantic models is consulted (``model_fields`` and annotations), so the
answers are available before any value is validated.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

_CONTAINERS: tuple[Any, ...] = (
    list,
    dict,
    set,
    frozenset,
    tuple,
    collections.abc.Sequence,
    collections.abc.Mapping,
    collections.abc.Set,
    collections.abc.MutableMapping,
    collections.abc.MutableSequence,
)
_MAPPINGS: tuple[Any, ...] = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _unwrap(annotation: Any) -> list[Any]:
    """Return the members of a union (``X | None`` gives ``[X]``), or ``[annotation]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        members: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                members.extend(_unwrap(arg))
        return members
    return [annotation]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _mapping_value_of(annotation: Any) -> tuple[bool, Any]:
    """Return ``(True, value annotation)`` when ``annotation`` is a mapping type."""
    for member in _unwrap(annotation):
        origin = typing.get_origin(member) or member
        if origin in _MAPPINGS:
            args = typing.get_args(member)
            return True, (args[1] if len(args) == 2 else Any)
    return False, None


def annotation_at(model: type[BaseModel], path: Sequence[str]) -> tuple[bool, Any]:
    """Return ``(found, annotation)`` for the field at ``path``, walking nested models and mappings."""
    annotation: Any = model
    for part in path:
        current = _model_of(annotation)
        if current is not None:
            field = current.model_fields.get(part)
            if field is None:
                return False, None
            annotation = field.annotation
            continue
        is_mapping, value_annotation = _mapping_value_of(annotation)
        if not is_mapping:
            return False, None
        annotation = value_annotation
    return True, annotation


def model_at(model: type[BaseModel], path: Sequence[str]) -> type[BaseModel] | None:
    """Return the pydantic model that holds the keys under ``path``, if the schema knows one."""
    found, annotation = annotation_at(model, path)
    return _model_of(annotation) if found else None


def field_names(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """Return the field names of the model at ``path`` (empty when ``path`` is not a model)."""
    current = model_at(model, path)
    return list(current.model_fields) if current is not None else []


def is_structured(model: type[BaseModel], path: Sequence[str]) -> bool:
    """Say whether the field at ``path`` takes a list, a mapping or a model (JSON in env variables)."""
    found, annotation = annotation_at(model, path)
    if not found:
        return False
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return True
        if (typing.get_origin(member) or member) in _CONTAINERS:
            return True
    return False


def is_secret_field(model: type[BaseModel], path: Sequence[str]) -> bool:
    """Say whether the field at ``path`` (or a list/mapping holding it) is typed as a pydantic secret."""
    for end in range(len(path), 0, -1):
        found, annotation = annotation_at(model, path[:end])
        if found:
            return _holds_secret(annotation)
    return False


def _holds_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))
