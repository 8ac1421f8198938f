"""One way to turn a parsed mapping (YAML, JSON, a weights file's record) into a frozen settings dataclass.

Every component's settings are a frozen dataclass validated in its ``__post_init__``; ``build_settings`` is the
single place that maps raw data onto one: unknown keys are a ``ConfigError`` that names them and lists the known
ones, a section that is not a mapping is named, nested settings dataclasses are built recursively, and lists
become tuples where the field is a tuple.  Used by the engine, the stages, training and the model configs alike.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from amodal.errors import ConfigError

T = TypeVar("T")


@functools.cache
def _field_types(kind: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(kind)
    except Exception:  # an annotation that cannot be resolved: fall back to no conversion for that class
        return {}


def _settings_class(annotation: Any) -> type | None:
    """The dataclass inside ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return classes[0] if len(classes) == 1 else None
    return None


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(annotation))
    return annotation is tuple or typing.get_origin(annotation) is tuple


def field_names(kind: type) -> list[str]:
    """The init fields of a settings dataclass, sorted (what error messages list as known)."""
    return sorted(f.name for f in dataclasses.fields(kind) if f.init)


def build_settings(kind: type[T], raw: Mapping[str, Any] | None, where: str, *,
                   required: Iterable[str] = ()) -> T:
    """``kind(**raw)`` with the checks every config needs.

    ``raw`` None gives the defaults; ``where`` names the section in errors (``"config.yaml: pipelines.cameras[1]"``);
    ``required`` lists keys that must be present even though the dataclass has a default for them."""
    if raw is None:
        raw = {}
    if isinstance(raw, kind):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    names = field_names(kind)
    unknown = sorted(str(k) for k in raw if k not in names)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"known: {', '.join(names)}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    hints = _field_types(kind)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        annotation = hints.get(key)
        nested = _settings_class(annotation)
        if nested is not None and isinstance(value, Mapping):
            value = build_settings(nested, value, f"{where}.{key}")
        elif isinstance(value, list) and _is_tuple(annotation):
            value = tuple(value)
        values[key] = value
    try:
        return kind(**values)
    except ConfigError as exc:
        message = str(exc)
        raise (exc if message.startswith(where) else ConfigError(f"{where}: {message}")) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file); a missing file, invalid YAML or another top
    level is a ``ConfigError`` naming the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data
