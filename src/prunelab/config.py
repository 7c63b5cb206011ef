"""Configs are frozen dataclasses that round-trip through JSON; ids hash them.

An id hashes only the settings that differ from their defaults (open_lth's way):
adding a setting with a default, at any depth, leaves every existing id, and so
every finished result, where it was. The price is that a default, once
released, never changes its value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; lists become tuples."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(value, list) and _is_tuple(hint):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _is_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) is tuple or hint is tuple


def to_json(config: Any, provenance: dict | None = None) -> str:
    """``config`` as JSON; ``provenance`` (where and with what it ran) rides along under
    its own key, which ``read_config`` sets aside."""
    data = to_dict(config)
    if provenance is not None:
        data["provenance"] = provenance
    return json.dumps(data, indent=2, sort_keys=True)


def read_config(path: str | Path, cls: type[T]) -> T:
    """A config written by ``to_json``; settings added since it was written take their
    defaults, at any depth."""
    data = json.loads(Path(path).read_text())
    data.pop("provenance", None)
    return from_dict(cls, data)


def canonical(value: Any) -> Any:
    """``value`` as JSON-able data in which every dataclass keeps only the fields that
    differ from their defaults (recursively, each against its own class's defaults)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not _is_default(f, getattr(value, f.name))
        }
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False  # a required field is always part of the id


def config_id(*parts: Any) -> str:
    """A short stable hash of configs (dataclasses, by their non-default settings, or
    JSON-able values)."""
    return hash_json(canonical(list(parts)))


def hash_json(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
