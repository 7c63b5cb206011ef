"""Sweep files: a study's settings and grid in TOML.

Keys are the study command's option names (``finetune-epochs`` or
``finetune_epochs``); values are TOML's own (a list where the setting takes
several, or the command line's comma-separated text). ``dataset``, ``model``
and ``schedule`` may be lists: one study runs per combination, each in its own
subdirectory of ``out``. Values given on the command line override the file's.

    dataset = ["mnist", "fashion-mnist"]
    methods = ["weight", "unit:obd"]
    ks = [0.5, 0.9, 0.95]
    seeds = 3
    finetune-epochs = 2
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunelab.options import Setting, value_at
from prunelab.study_config import RunOptions, StudyConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPANDED = ("dataset", "model.name", "schedule.name")  # a list of these: one study each


def read_sweep(path: str | Path, settings: Sequence[Setting]) -> dict[str, Any]:
    """The file's values keyed by field path, each checked as its setting takes it
    (a list of values where one study runs per value), or a one-line ValueError."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read the sweep file {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    by_key = {s.flag.replace("-", "_"): s for s in settings}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        setting = by_key.get(name)
        negated = by_key.get(name.removeprefix("no_")) if name.startswith("no_") else None
        if setting is None and negated is not None and negated.is_flag:
            setting, value = negated, not negated.coerce(value)  # no-download = true
        if setting is None:
            raise ValueError(
                f"unknown key {key!r} in {path}; keys are the options of prunelab study: "
                + ", ".join(sorted(s.flag for s in settings))
            )
        try:
            if setting.path in EXPANDED and isinstance(value, list):
                values[setting.path] = [setting.coerce(v) for v in value]
            else:
                values[setting.path] = setting.coerce(value)
        except ValueError as err:
            raise ValueError(f"{path}: {key}: {err}") from None
    return values


def sweep_studies(values: Mapping[str, Any], given: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The values of each study of a sweep: the file's ``values`` at each combination
    of its listed settings, the command line's ``given`` values over them. Where the
    file lists more than one combination, each study runs in a subdirectory of ``out``
    named after its dataset, model and schedule."""
    lists = {key: values[key] for key in EXPANDED if isinstance(values.get(key), list)}
    several = math.prod(len(v) for v in lists.values()) > 1
    studies: list[dict[str, Any]] = []
    for combination in itertools.product(*lists.values()):
        study = {**values, **dict(zip(lists, combination, strict=True)), **given}
        if several:
            names = (str(study.get(key, value_at(StudyConfig(), key))) for key in EXPANDED)
            study["out"] = Path(study.get("out", RunOptions().out)) / "-".join(names)
        if study not in studies:  # the command line overrode a listed setting
            studies.append(study)
    return studies
