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
from typing import TYPE_CHECKING, Any

from prunelab.config import hash_json
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod
from prunelab.storage import atomic_write_text

if TYPE_CHECKING:
    from prunelab.study import StudyConfig

FIELDS_0_1_0 = {
    "TrainConfig": ("optimizer", "lr", "batch_size", "epochs", "lr_schedule", "augment"),
    "ModelConfig": ("name", "hidden", "dropout"),
    "Schedule": ("name", "rounds", "ramp", "every", "rewind_steps"),
    "PruneMethod": ("structure", "criterion", "scope"),
}


def _as_0_1_0(config: Any) -> dict:
    return {name: getattr(config, name) for name in FIELDS_0_1_0[type(config).__name__]}


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


def migrate_ids(paths: RunPaths, config: StudyConfig) -> int:
    """Rename the 0.1.0 files of ``config``'s base models and cells; return how many."""
    renamed = 0
    for c in config.per_seed():
        old, new = base_id_0_1_0(c), c.base_id()
        for path in sorted(paths.base_model(old).parent.glob(f"{old}.*")):
            target = path.with_name(new + path.name[len(old) :])
            if path.name.endswith(".json"):  # the record names its id
                record = json.loads(path.read_text())
                atomic_write_text(path, json.dumps({**record, "base_id": new}, indent=1))
            os.replace(path, target)
            renamed += 1
        for name in config.methods:
            method = PruneMethod.parse(name)
            for k in config.ks:
                old, new = cell_id_0_1_0(c, method, k), c.cell_id(method, k)
                for where in (paths.cell, paths.cell_model, paths.cell_failure):
                    if where(old).exists():
                        os.replace(where(old), where(new))
                        renamed += 1
    return renamed
