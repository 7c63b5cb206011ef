"""Models and data of your own from the command line: ``--model package.module:function``
(a module importable from the working directory) or ``--model path/to/file.py:function``,
and ``--data`` likewise (``prunelab.user_data``).

A model function returns an ``nn.Module``; it is called with ``--model-kwargs`` (JSON)
and, where it takes them and the data says, ``num_classes`` and ``in_channels`` (of
images) from the dataset. The file
a function is defined in is fingerprinted (SHA-256) into the config, so a run directory
or an exported model refuses code that changed since (the files that file imports are
not covered).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn


class Choices(dict):
    """A registry's names, and any ``module:function`` of your own."""

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and is_factory(name))


class FactoryError(ValueError):
    """A ``--model module:function`` that cannot be found, called or used."""


def is_factory(name: str) -> bool:
    return ":" in name


def _split(name: str, flag: str = "--model") -> tuple[str, str]:
    where, _, function = name.rpartition(":")
    if not where or not function.isidentifier():
        raise FactoryError(f"{flag} {name!r}: give package.module:function or file.py:function")
    return where, function


def absolute(name: str, flag: str = "--model") -> str:
    """``name`` with a file given by its absolute path (a module name stays as it is)."""
    where, function = _split(name, flag)
    return f"{Path(where).resolve()}:{function}" if where.endswith(".py") else name


def source_file(name: str, flag: str = "--model") -> Path:
    """The file a factory is defined in, found without running it."""
    where, _ = _split(name, flag)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FactoryError(f"{flag} {name!r}: no file {path}")
        return path.resolve()
    with _working_directory_importable():
        try:
            spec = importlib.util.find_spec(where)
        except (ImportError, ValueError) as err:
            raise FactoryError(f"{flag} {name!r}: cannot find module {where!r} ({err})") from err
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        raise FactoryError(f"{flag} {name!r}: no module {where!r} importable from here")
    return Path(spec.origin)


def fingerprint(name: str, flag: str = "--model") -> str:
    return "sha256:" + hashlib.sha256(source_file(name, flag).read_bytes()).hexdigest()


def check_unchanged(name: str, source: str | None, flag: str = "--model") -> None:
    """The factory's file is still the one ``source`` fingerprinted, or a FactoryError."""
    if source is not None and fingerprint(name, flag) != source:
        raise FactoryError(
            f"{source_file(name, flag)} changed since this run was configured ({source}); "
            "use the code it was made with, or start a new run"
        )


def load(name: str, flag: str = "--model") -> Callable[..., Any]:
    """The factory function itself (its module is imported, which runs it)."""
    where, function = _split(name, flag)
    path = source_file(name, flag)
    try:
        with _working_directory_importable():
            if where.endswith(".py"):
                spec = importlib.util.spec_from_file_location(f"prunelab_model_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
    except Exception as err:
        raise FactoryError(f"{flag} {name!r}: importing {path} fails: "
                           f"{type(err).__name__}: {err}") from err  # fmt: skip
    factory = getattr(module, function, None)
    if not callable(factory):
        raise FactoryError(f"{flag} {name!r}: {path} has no function {function!r}")
    return factory


def build(
    name: str, source: str | None, kwargs: dict, num_classes: int | None, shape: tuple[int, ...]
) -> nn.Module:
    """Call the factory, if its file is still ``source``, and check that it gave a module."""
    check_unchanged(name, source)
    factory = load(name)
    given = dict(kwargs)
    parameters = _parameters(factory)
    channels = shape[0] if len(shape) == 3 else None  # of images only
    for key, value in (("num_classes", num_classes), ("in_channels", channels)):
        if value is not None and key in parameters and key not in given:
            given[key] = value
    try:
        model = factory(**given)
    except Exception as err:
        raise FactoryError(f"--model {name!r}: calling it with {given} fails: "
                           f"{type(err).__name__}: {err}") from err  # fmt: skip
    if not isinstance(model, nn.Module):
        raise FactoryError(
            f"--model {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _parameters(function: Callable) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


class _working_directory_importable:
    """The working directory on ``sys.path`` for a while, as ``python -m`` has it."""

    def __enter__(self) -> None:
        self.added = str(Path.cwd()) not in sys.path
        if self.added:
            sys.path.insert(0, str(Path.cwd()))

    def __exit__(self, *exc) -> None:
        if self.added and str(Path.cwd()) in sys.path:
            sys.path.remove(str(Path.cwd()))
