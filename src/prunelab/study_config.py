"""What a study computes (``StudyConfig``, its recipes and grid) and how it runs
(``RunOptions``). Ids hash the settings that differ from their defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from prunelab.config import canonical, config_id, read_config
from prunelab.data import DATASETS
from prunelab.migrate import ensure_migrated
from prunelab.models import ModelConfig
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod, check_k
from prunelab.schedules import Schedule
from prunelab.train import TrainConfig

DEFAULT_KS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def _default_finetune() -> TrainConfig:
    # Adam at the training peak rate, annealed to zero within the fine-tuning: after one
    # epoch it recovers far more than a peak of 1e-4 (unit k=0.8: 97.7% vs 94.4% test
    # accuracy; weight k=0.99: 94.1% vs 15%), and k=0 stays within 0.2 points of dense.
    return TrainConfig(epochs=1, lr=1e-3, lr_schedule="cosine")


# What the dense model depends on, and what a cell adds to it (the grid aside).
BASE_SETTINGS = ("dataset", "val_size", "train_limit", "model", "train", "seed")


CELL_SETTINGS = ("finetune", "prune_last", "schedule")


@dataclass(frozen=True)
class StudyConfig:
    """What a study computes. Ids hash the settings that differ from their defaults
    (``prunelab.config.canonical``); the grid (methods, ks, seeds) picks the cells."""

    dataset: str = "mnist"
    val_size: int = 5000
    train_limit: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=_default_finetune)
    methods: tuple[str, ...] = ("weight", "unit")  # STRUCTURE[:CRITERION][@SCOPE]
    ks: tuple[float, ...] = DEFAULT_KS
    prune_last: bool = False
    calibration_size: int = 1024  # training images the data-driven criteria look at
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    seeds: int = 1  # every cell is repeated for seeds seed, seed + 1, ...

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if not self.methods or not self.ks:
            raise ValueError("a study needs at least one method and one k")
        for method in self.methods:
            PruneMethod.parse(method)
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"`train_limit` must be positive, got {self.train_limit}")
        if self.seeds < 1:
            raise ValueError(f"`seeds` must be at least 1, got {self.seeds}")
        if self.calibration_size < 1:
            raise ValueError(f"`calibration_size` must be positive, got {self.calibration_size}")
        for k in self.ks:
            check_k(k)

    def settings(self, names: tuple[str, ...]) -> dict:
        """The named settings that differ from their defaults, as ids hash them."""
        return {name: value for name, value in canonical(self).items() if name in names}

    def base_id(self) -> str:
        return config_id("base", self.settings(BASE_SETTINGS))

    def cell_id(self, method: PruneMethod, k: float) -> str:
        names = CELL_SETTINGS + (("calibration_size",) if method.needs_data else ())
        if self.schedule.name == "oneshot":  # the other schedules' settings change nothing
            names = tuple(name for name in names if name != "schedule")
        return config_id("cell", self.base_id(), method, k, self.settings(names))

    def per_seed(self) -> list[StudyConfig]:
        """One configuration per seed; each has its own base model and cells."""
        return [replace(self, seed=self.seed + i, seeds=1) for i in range(self.seeds)]


SEED_TRAINING = TrainConfig(
    "rmsprop", lr=1e-4, batch_size=16, epochs=20, lr_schedule="constant", augment=True
)


RECIPES = {
    # Adam with a cosine schedule: about 98.5% test accuracy on MNIST in 5 epochs.
    "fast": StudyConfig(),
    # The seed notebook's own recipe: RMSprop, lr 1e-4, batch 16, dropout, augmentation.
    "seed": StudyConfig(
        model=ModelConfig(dropout=(0.25, 0.25, 0.4, 0.4)),
        train=SEED_TRAINING,
        finetune=replace(SEED_TRAINING, epochs=1),
    ),
}


def quick(config: StudyConfig) -> StudyConfig:
    """A small, fast version of ``config``: 10,000 training images, 3 epochs."""
    return replace(config, train_limit=10_000, train=replace(config.train, epochs=3))


@dataclass(frozen=True)
class RunOptions:
    """How a study runs (not what it computes): none of this enters an id."""

    out: Path = Path("runs/study")
    data_dir: Path | None = None
    device: str = "auto"
    download: bool = True
    executor: str = "local"  # a name in prunelab.executors.EXECUTORS
    workers: int = 1  # local processes running cells
    ray_address: str | None = None  # an existing Ray cluster; None starts a local one
    threads: int | None = None  # torch threads per cell; None: cores / workers (Ray: 1)


def study_cells(config: StudyConfig) -> list[tuple[StudyConfig, PruneMethod, float]]:
    """Every (per-seed configuration, method, k) of the grid, in the tables' order."""
    methods = [PruneMethod.parse(m) for m in config.methods]
    return [(c, method, k) for c in config.per_seed() for method in methods for k in config.ks]


def load_config(path: str | Path) -> StudyConfig:
    return read_config(path, StudyConfig)


def open_run(run_dir: str | Path) -> tuple[RunPaths, StudyConfig]:
    """A study's run directory and configuration, for commands that read it (a 0.1.0
    directory is migrated to today's ids first)."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise ValueError(f"{run_dir} is not a study run directory (it has no config.json)")
    config = load_config(paths.config)
    ensure_migrated(paths, config)
    return paths, config


@dataclass(frozen=True)
class CellState:
    method: str
    k: float
    seed: int
    state: str  # "finished", "failed" or "pending"
    error: str | None = None  # of the last failed attempt


def cell_states(paths: RunPaths, config: StudyConfig) -> list[CellState]:
    """Where each cell of the grid stands, in the tables' order."""
    states = []
    for c, method, k in study_cells(config):
        cell_id, error = c.cell_id(method, k), None
        if paths.cell(cell_id).exists():
            state = "finished"
        elif paths.cell_failure(cell_id).exists():
            state = "failed"
            error = json.loads(paths.cell_failure(cell_id).read_text())["error"]
        else:
            state = "pending"
        states.append(CellState(method.name, k, c.seed, state, error))
    return states
