"""Sweep files: a study's settings and grid in TOML, read as command-line defaults.

Keys are the study command's option names (``finetune-epochs`` or
``finetune_epochs``); lists become the comma-separated values the command line
takes. ``dataset``, ``model`` and ``schedule`` may be lists: one study runs per
combination, each in its own subdirectory of ``out``. Options given on the
command line override the file.

    dataset = ["mnist", "fashion-mnist"]
    methods = ["weight", "unit:obd"]
    ks = [0.5, 0.9, 0.95]
    seeds = 3
    finetune-epochs = 2
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPANDED = ("dataset", "model", "schedule")  # a list of these means one study each


def read_sweep(path: str | Path, known: set[str]) -> dict:
    """The file's settings keyed by option destination, or a one-line ValueError."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read the sweep file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    values = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in known or dest == "config":
            raise ValueError(
                f"unknown key {key!r} in {path}; keys are the options of prunelab study: "
                + ", ".join(sorted(k.replace("_", "-") for k in known - {"config"}))
            )
        if isinstance(value, dict):
            raise ValueError(f"{path}: {key!r} must be a value or a list, not a table")
        values[dest] = value
    return values


def _as_option(value):
    """What the command line would have given: text, or a flag's bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def expand(values: dict) -> list[dict]:
    """One dict of command-line defaults per study of the sweep."""
    grid = {key: values[key] for key in EXPANDED if isinstance(values.get(key), list)}
    fixed = {key: _as_option(v) for key, v in values.items() if key not in grid}
    return [
        {**fixed, **dict(zip(grid, combination, strict=True))}
        for combination in itertools.product(*grid.values())
    ]
