"""Run directories of prunelab 0.1.0, renamed to today's ids.

0.1.0 hashed every setting into its ids, defaults included, so a setting added
since would have orphaned its results. Today's ids hash only the settings that
differ from their defaults (``prunelab.config.canonical``); this module computes
the 0.1.0 ids from the fields 0.1.0 had, frozen here, and renames the files a
study still needs. Renames are atomic, so it is safe to repeat.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.config import hash_json
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod
from prunelab.rundir import RunLock
from prunelab.storage import atomic_write_text

if TYPE_CHECKING:
    from prunelab.study_config import StudyConfig

FIELDS_0_1_0 = {
    "TrainConfig": ("optimizer", "lr", "batch_size", "epochs", "lr_schedule", "augment"),
    "ModelConfig": ("name", "hidden", "dropout"),
    "Schedule": ("name", "rounds", "ramp", "every", "rewind_steps"),
    "PruneMethod": ("structure", "criterion", "scope"),
}


def _as_0_1_0(config: Any) -> dict:
    """``config``'s settings that 0.1.0 had (a subclass of a 0.1.0 config counts as it)."""
    for cls in type(config).__mro__:
        if cls.__name__ in FIELDS_0_1_0:
            return {name: getattr(config, name) for name in FIELDS_0_1_0[cls.__name__]}
    raise TypeError(f"{type(config).__name__} has no 0.1.0 form")


def base_id_0_1_0(c: StudyConfig) -> str:
    parts = [c.dataset, c.val_size, c.train_limit, _as_0_1_0(c.model), _as_0_1_0(c.train), c.seed]
    return hash_json(["base", *parts])


def cell_id_0_1_0(c: StudyConfig, method: PruneMethod, k: float) -> str:
    calibration = c.calibration_size if method.needs_data else None
    parts = [base_id_0_1_0(c), _as_0_1_0(method), k, _as_0_1_0(c.finetune), c.prune_last,
             calibration]  # fmt: skip
    if c.schedule.name != "oneshot":
        parts.append(_as_0_1_0(c.schedule))
    return hash_json(["cell", *parts])


def renames(paths: RunPaths, config: StudyConfig) -> list[tuple[Path, Path]]:
    """(0.1.0 file, today's name) for each file of ``config``'s grid still under its 0.1.0 id."""
    pairs = []
    for c in config.per_seed():
        old, new = base_id_0_1_0(c), c.base_id()
        for path in sorted(paths.base_model(old).parent.glob(f"{old}.*")):
            pairs.append((path, path.with_name(new + path.name[len(old) :])))
        for name in config.methods:
            method = PruneMethod.parse(name)
            if method.revision:  # 0.1.0 ran another algorithm under this name
                continue
            for k in config.ks:
                old, new = cell_id_0_1_0(c, method, k), c.cell_id(method, k)
                for where in (paths.cell, paths.cell_model, paths.cell_failure):
                    if where(old).exists():
                        pairs.append((where(old), where(new)))
    return pairs


def migrate_ids(paths: RunPaths, config: StudyConfig) -> int:
    """Rename the 0.1.0 files of ``config``'s base models and cells; return how many.
    The caller holds the run directory's lock (a study does)."""
    pairs = renames(paths, config)
    for old, new in pairs:
        if old.parent.name == "base" and old.suffix == ".json":  # the record names its id
            record = json.loads(old.read_text())
            base_id = new.name.removesuffix(".json")
            atomic_write_text(old, json.dumps({**record, "base_id": base_id}, indent=1))
        os.replace(old, new)
    return len(pairs)


def ensure_migrated(paths: RunPaths, config: StudyConfig) -> None:
    """For commands that read a run directory: migrate it, under its lock, if it needs it
    (a study running in it has done so already)."""
    if renames(paths, config):
        with RunLock(paths.root):
            migrate_ids(paths, config)
