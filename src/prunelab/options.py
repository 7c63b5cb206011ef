"""Settings by name, read from the config dataclasses themselves.

A field is a setting when its metadata has ``help``. A nested config dataclass
lends its settings when its field's metadata has ``prefix`` (prepended to their
flags) and ``of`` (appended to their help, or ``notes[name]`` in its place).
``flag`` renames one setting, ``what`` names one of its values in errors, and
``choices`` (a registry dict, or any collection) limits its values. Help and
choices may be functions, read when the table is made: a registry is listed as
it is then, entries registered after import included. The command line, sweep
files and error messages read this one table, so a field added with its help is
a flag, a sweep key and a name in errors at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    path: str  # the field it sets, dotted through nested configs: "finetune.epochs"
    flag: str  # its command-line name, without dashes: "finetune-epochs"
    kind: Any  # the field's type hint, None removed: int, tuple[float, ...], Path, ...
    help: str  # what it is and its default
    choices: Collection | None = None
    what: str = ""  # what one value is, for errors (default: the flag)
    aliases: tuple[str, ...] = ()  # other command-line names

    @property
    def is_flag(self) -> bool:
        return self.kind is bool

    @property
    def is_list(self) -> bool:
        return _item(self.kind) is not None

    def parse(self, text: str) -> Any:
        """The value of command-line ``text`` (a list is comma-separated)."""
        if self.is_list:
            return tuple(self._one(v.strip()) for v in text.split(",") if v.strip())
        if self.is_flag and text.lower() in ("true", "false"):
            return text.lower() == "true"
        return self._one(text)

    def coerce(self, value: Any) -> Any:
        """``value`` from a file or from Python (text, a number, a bool, a list, or one
        value where a list is taken) as the field takes it; a ValueError says what was
        expected."""
        if isinstance(value, str):
            return self.parse(value)
        if isinstance(value, (list, tuple)) and self.is_list:
            return tuple(self._one(v) for v in value)
        return (self._one(value),) if self.is_list else self._one(value)

    def _one(self, value: Any) -> Any:
        value = _convert(_item(self.kind) or self.kind, value)
        if self.choices is not None:
            check_choice(self.what or self.flag, value, self.choices)
        return value


def _convert(kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is dict or kind is dict:
        return _mapping(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind in (str, Path) and not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if kind is int and isinstance(value, float):
        raise ValueError(f"expected an integer, got {value!r}")
    if kind in (int, float) and not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"expected {name}, got {value!r}") from None


def _mapping(value: Any) -> dict:
    """A table from a file, or JSON text from the command line."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"expected a JSON object, got {value!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object of keyword arguments, got {value!r}")
    return value


def _item(kind: Any) -> Any:
    """The item type of a ``tuple[X, ...]`` hint, else None."""
    return typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def check_choice(what: str, value: Any, choices: Collection) -> None:
    """A one-line ValueError that names the choices, unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(map(str, choices))}")


def shown(value: Any) -> str:
    """A default as the command line would give it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def listing(registry: Mapping[str, Any]) -> str:
    """A registry's entries with their descriptions, for help."""
    return "; ".join(f"{name}: {entry.describe}" for name, entry in registry.items())


def value_at(config: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), config)


def settings_of(
    cls: type, defaults: Mapping[str, Any], skip: Collection[str] = ()
) -> list[Setting]:
    """The settings of config class ``cls``, in field order, but those in ``skip``.

    ``defaults`` names the instances whose values are the defaults (a study's
    recipes): help gives the one default, or each instance's where they differ.
    """
    settings = [
        dataclasses.replace(s, help=s.help + _default_text(s.path, defaults))
        for s in _walk(cls, "", "", "", {})
        if s.path not in skip
    ]
    flags = [s.flag for s in settings]
    assert len(flags) == len(set(flags)), f"two settings of {cls.__name__} share a flag"
    return settings


def _walk(
    cls: type, flag_prefix: str, path_prefix: str, of: str, notes: Mapping[str, str]
) -> Iterator[Setting]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, hint, path = f.metadata, _without_none(hints[f.name]), path_prefix + f.name
        if dataclasses.is_dataclass(hint):
            if "prefix" in meta:
                prefixes = (flag_prefix + meta["prefix"], path + ".")
                yield from _walk(hint, *prefixes, meta["of"], meta.get("notes", {}))
        elif "help" in meta:
            text, choices = _called(meta["help"]), _called(meta.get("choices"))
            flag = flag_prefix + meta.get("flag", f.name.replace("_", "-"))
            text = " ".join(filter(None, (text, notes.get(f.name, of))))
            yield Setting(path, flag, hint, text, choices, meta.get("what", ""),
                          meta.get("aliases", ()))  # fmt: skip


def _called(value: Any) -> Any:
    """Metadata given as a function (a registry defined after the class) is read now."""
    return value() if callable(value) else value


def _default_text(path: str, defaults: Mapping[str, Any]) -> str:
    values = {label: value_at(instance, path) for label, instance in defaults.items()}
    if any(value is None for value in values.values()):
        return ""  # the help says what no value means
    if len({shown(v) for v in values.values()}) == 1:
        return f" (default: {shown(next(iter(values.values())))})"
    return (
        " (default: the recipe's: "
        + ", ".join(f"{label} {shown(value)}" for label, value in values.items())
        + ")"
    )


def apply(config: T, values: Mapping[str, Any]) -> T:
    """``config`` with each value (keyed by dotted field path) set, nested configs
    rebuilt, so every config checks its own fields as it is made."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(config)}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if head not in names:
            raise ValueError(
                f"{type(config).__name__} has no setting {head!r}; its settings are "
                + ", ".join(sorted(names))
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = apply(getattr(config, head), inner)
    return dataclasses.replace(config, **top)
