"""Settings by name, read from the config dataclasses themselves.

A field is a setting when its metadata has ``help``. A nested config
dataclass lends its settings when its field's metadata has ``prefix`` (prepended
to their flags) and ``of`` (appended to their help); ``flag`` renames one setting
and ``choices`` (a registry dict, or any collection) limits its values. Help
and choices may be functions, read when the table is made: a registry is
listed as it is then, entries registered after import included. The
command line, sweep files and error messages read this one table, so a field
added with its help is a flag, a sweep key and a name in errors at once.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    path: str  # the field it sets, dotted through nested configs: "finetune.epochs"
    flag: str  # its command-line name, without dashes: "finetune-epochs"
    kind: Any  # the field's type hint, None removed: int, tuple[float, ...], Path, ...
    help: str  # what it is and its default
    choices: Collection | None = None

    @property
    def is_flag(self) -> bool:
        return self.kind is bool

    @property
    def is_list(self) -> bool:
        return _item(self.kind) is not None

    def parse(self, text: str) -> Any:
        """The value of command-line ``text`` (a list is comma-separated)."""
        if self.is_list:
            return tuple(
                self._one(_item(self.kind), v.strip()) for v in text.split(",") if v.strip()
            )
        return self._one(self.kind, text)

    def coerce(self, value: Any) -> Any:
        """``value`` from a file or from Python (text, a number, a bool, a list) as the
        field takes it; a ValueError says what was expected."""
        if isinstance(value, str):
            return self.parse(value)
        item = _item(self.kind)
        if item is not None and isinstance(value, (list, tuple)):
            return tuple(self._one(item, v) for v in value)
        return self._one(self.kind, value)

    def _one(self, kind: Any, value: Any) -> Any:
        value = _convert(kind, value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, self.choices))}")
        return value


def _convert(kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if kind is int and isinstance(value, float):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"expected {name}, got {value!r}") from None


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


def get(config: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), config)


def settings_of(
    cls: type, defaults: Mapping[str, Any], skip: Collection[str] = ()
) -> list[Setting]:
    """The settings of config class ``cls``, in field order, but those in ``skip``.

    ``defaults`` names the instances whose values are the defaults (a study's
    recipes): help gives the one default, or each instance's where they differ.
    """
    return [
        dataclasses.replace(s, help=s.help + _default_text(s.path, defaults))
        for s in _walk(cls, "", "", "")
        if s.path not in skip
    ]


def _walk(cls: type, flag_prefix: str, path_prefix: str, of: str) -> Iterator[Setting]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, hint, path = f.metadata, _without_none(hints[f.name]), path_prefix + f.name
        if dataclasses.is_dataclass(hint):
            if "prefix" in meta:
                yield from _walk(hint, flag_prefix + meta["prefix"], path + ".", meta["of"])
        elif "help" in meta:
            text, choices = _called(meta["help"]), _called(meta.get("choices"))
            flag = flag_prefix + meta.get("flag", f.name.replace("_", "-"))
            yield Setting(path, flag, hint, " ".join(filter(None, (text, of))), choices)


def _called(value: Any) -> Any:
    """Metadata given as a function (a registry defined after the class) is read now."""
    return value() if callable(value) else value


def _default_text(path: str, defaults: Mapping[str, Any]) -> str:
    values = {label: get(instance, path) for label, instance in defaults.items()}
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
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = apply(getattr(config, head), inner)
    return dataclasses.replace(config, **top)
