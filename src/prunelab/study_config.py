"""What a study computes (``StudyConfig``, its recipes and grid) and how it runs
(``RunOptions``). Ids hash the settings that differ from their defaults."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from prunelab.config import canonical, config_id, read_config
from prunelab.data import DATASETS
from prunelab.executors import EXECUTORS
from prunelab.factories import Choices, absolute, fingerprint, is_factory
from prunelab.loggers import LOGGERS
from prunelab.migrate import ensure_migrated
from prunelab.models import ModelConfig
from prunelab.options import Setting, apply, check_choice, listing, settings_of
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod, check_k
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.method import STRUCTURES
from prunelab.schedules import Schedule
from prunelab.tasks import TASKS, Metric
from prunelab.train import TrainConfig

DEFAULT_KS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def _default_finetune() -> TrainConfig:
    # Adam at the training peak rate, annealed to zero within the fine-tuning: after one
    # epoch it recovers far more than a peak of 1e-4 (unit k=0.8: 97.7% vs 94.4% test
    # accuracy; weight k=0.99: 94.1% vs 15%), and k=0 stays within 0.2 points of dense.
    return TrainConfig(epochs=1, lr=1e-3, lr_schedule="cosine")


# What the dense model depends on, and what a cell adds to it (the grid aside).
BASE_SETTINGS = (
    "dataset", "data_kwargs", "data_source", "task", "val_size", "train_limit", "model",
    "train", "seed",
)  # fmt: skip


CELL_SETTINGS = ("finetune", "prune_last", "schedule", "ignore", "include")


@dataclass(frozen=True)
class StudyConfig:
    """What a study computes. Ids hash the settings that differ from their defaults
    (``prunelab.config.canonical``); the grid (methods, ks, seeds) picks the cells."""

    dataset: str = field(
        default="mnist",
        metadata={"help": lambda: listing(DATASETS) + "; or your own, package.module:function "
                  "or file.py:function (prunelab.user_data says what it returns)",
                  "choices": lambda: Choices(DATASETS), "aliases": ("data",)},
    )  # fmt: skip
    data_kwargs: dict[str, Any] = field(
        default_factory=dict,
        hash=False,
        metadata={"help": "keyword arguments of your --data function, as JSON"},
    )
    data_source: str | None = None  # the fingerprint of your --data function's file
    task: str = field(
        default="classification",
        metadata={"help": lambda: "the loss and the metric: " + listing(TASKS), "choices": TASKS},
    )
    val_size: int = field(
        default=5000, metadata={"help": "validation images carved from the training set"}
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "use only this many training images (default: all)"}
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"prefix": "", "of": ""})
    train: TrainConfig = field(
        default_factory=TrainConfig,
        metadata={"prefix": "", "of": "of the dense model",
                  "notes": {"batch_size": "of the dense model, and of fine-tuning unless "
                            "given its own"}},
    )  # fmt: skip
    finetune: TrainConfig = field(
        default_factory=_default_finetune,
        metadata={"prefix": "finetune-", "of": "of fine-tuning, per cell"},
    )
    methods: tuple[str, ...] = field(
        default=("weight", "unit"),
        metadata={"help": lambda: "comma-separated STRUCTURE[:CRITERION][@SCOPE]; structures: "
                  f"{', '.join(STRUCTURES)}; criteria: {', '.join(CRITERIA)}; a bare "
                  "structure means magnitude; scopes as --scope (weight:wanda@2:4)"},
    )  # fmt: skip
    ks: tuple[float, ...] = field(
        default=DEFAULT_KS, metadata={"help": "comma-separated fractions to prune, each in [0, 1)"}
    )
    prune_last: bool = field(default=False, metadata={"help": "prune the logits layer too"})
    ignore: tuple[str, ...] = field(
        default=(),
        metadata={"help": "comma-separated fnmatch patterns of layers never pruned, e.g. "
                  "'stem.*,stages.0.*'"},
    )  # fmt: skip
    include: tuple[str, ...] = field(
        default=(),
        metadata={"help": "comma-separated patterns of the only layers pruned (default: every "
                  "layer but those that produce the outputs)"},
    )  # fmt: skip
    calibration_size: int = field(
        default=1024,
        metadata={"help": "training images that the criteria of data look at (obd, fisher, "
                          "taylor, wanda, obs, obc, obc-rounds)", "flag": "calibration"},
    )  # fmt: skip
    schedule: Schedule = field(default_factory=Schedule, metadata={"prefix": "", "of": ""})
    seed: int = field(
        default=0, metadata={"help": "seed of initialisation, batch order and dropout"}
    )
    seeds: int = field(  # every cell is repeated for seeds seed, seed + 1, ...
        default=1,
        metadata={"help": "repeat every cell, base model included, over this many seeds; "
                  "tables give mean and std, figures a band"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, Choices(DATASETS))
        check_choice("task", self.task, TASKS)
        self._fit_model()
        if not self.methods or not self.ks:
            raise ValueError("a study needs at least one method and one k")
        for method in self.methods:
            pattern = PruneMethod.parse(method).pattern
            if pattern is not None:
                pattern.check_grid(method, self.ks, self.schedule.name)
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"`train_limit` must be positive, got {self.train_limit}")
        if self.seeds < 1:
            raise ValueError(f"`seeds` must be at least 1, got {self.seeds}")
        if self.calibration_size < 1:
            raise ValueError(f"`calibration_size` must be positive, got {self.calibration_size}")
        for k in self.ks:
            check_k(k)

    def _fit_model(self) -> None:
        """The model reads the dataset's inputs and gives its classes; a folder of images
        and your own data say what they are only when read."""
        if is_factory(self.dataset):
            object.__setattr__(self, "dataset", absolute(self.dataset, "--data"))
            if self.data_source is None:
                object.__setattr__(self, "data_source", fingerprint(self.dataset, "--data"))
            spec = None
        else:
            if self.data_kwargs:
                raise ValueError("--data-kwargs is for your own --data function")
            spec = DATASETS[self.dataset]
        if spec is not None and spec.shape is not None:
            model = self.model.for_data(spec.shape, spec.classes)
        else:
            model = replace(self.model, input_shape=None, classes=None)
        if model != self.model:
            object.__setattr__(self, "model", model)

    @property
    def metric(self) -> Metric:
        return TASKS[self.task].metric

    def settings(self, names: tuple[str, ...]) -> dict:
        """The named settings that differ from their defaults, as ids hash them."""
        return {name: value for name, value in canonical(self).items() if name in names}

    def base_id(self) -> str:
        return config_id("base", self.settings(BASE_SETTINGS))

    def cell_id(self, method: PruneMethod, k: float) -> str:
        names = CELL_SETTINGS + (("calibration_size",) if method.needs_data else ())
        if self.schedule.name == "oneshot":  # the other schedules' settings change nothing
            names = tuple(name for name in names if name != "schedule")
        revision = (method.revision,) if method.revision else ()  # a changed algorithm
        return config_id("cell", self.base_id(), method, k, self.settings(names), *revision)

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


QUICK = quick(StudyConfig())


@dataclass(frozen=True)
class Start:
    """Where settings by name start from: a recipe, made quick or not; and the scopes
    that methods naming none are run at."""

    recipe: str = field(
        default="fast",
        metadata={"help": lambda: "; ".join(f"{name}: {_training(c)}" for name, c in
                                            RECIPES.items()), "choices": lambda: RECIPES},
    )  # fmt: skip
    quick: bool = field(
        default=False,
        metadata={"help": f"small and fast: {QUICK.train_limit:,} training images, "
                  f"{QUICK.train.epochs} epochs"},
    )  # fmt: skip
    scope: tuple[str, ...] = field(
        default=("layer",),
        metadata={"help": "comma-separated scopes for methods that name none (layer: every "
                  "prunable layer loses k; global: k of all weights or units, ranked together, "
                  "every layer keeping at least one; N:M such as 2:4: N of every M consecutive "
                  "weights, one-shot at k = 1 - N/M)"},
    )  # fmt: skip


def _training(config: StudyConfig) -> str:
    train = config.train
    return (
        f"{train.optimizer}, lr {train.lr:g} ({train.lr_schedule}), batch {train.batch_size}, "
        f"{train.epochs} epochs"
        + (", augmentation" if train.augment else "")
        + (", dropout" if config.model.dropout else "")
    )


def configure(values: Mapping[str, Any] | None = None, start: Start | None = None) -> StudyConfig:
    """The recipe's configuration (made quick if asked) with ``values``, keyed by dotted
    field path (``{"train.epochs": 3, "model.name": "lenet5"}``), set.

    What the recipe sets for one setting carries over to another only where it
    must: a different model starts from that model's own sizes, a recipe's dropout
    is kept only for a network of its depth, fine-tuning takes the training batch size
    unless it is given its own, and methods naming no scope run at each of ``start.scope``.
    """
    start = start or Start()
    config = quick(RECIPES[start.recipe]) if start.quick else RECIPES[start.recipe]
    values = dict(values or {})
    if values.get("model.name", config.model.name) != config.model.name:
        config = replace(config, model=ModelConfig(values["model.name"]))
    hidden = values.get("model.hidden")
    if hidden is not None and len(hidden) != len(config.model.dropout):
        config = replace(config, model=replace(config.model, dropout=()))
    if "train.batch_size" in values:
        values.setdefault("finetune.batch_size", values["train.batch_size"])
    methods = values.get("methods", config.methods)
    scoped = (PruneMethod.parse(m, scope).name for scope in start.scope for m in methods)
    values["methods"] = tuple(dict.fromkeys(scoped))
    return apply(config, values)


@dataclass(frozen=True)
class RunOptions:
    """How a study runs (not what it computes): none of this enters an id."""

    out: Path = field(default=Path("runs/study"), metadata={"help": "run directory"})
    data_dir: Path | None = field(
        default=None,
        metadata={"help": "folder holding the dataset's files (IDX files, a CIFAR archive, or "
                  "class folders of images; default: the "
                  "cache, an installed copy, else a download)"},
    )  # fmt: skip
    data_workers: int = field(
        default=0,
        metadata={"help": "processes that load batches of a Dataset your --data function "
                  "returns (a DataLoader keeps its own)"},
    )  # fmt: skip
    device: str = field(
        default="auto",
        metadata={"help": "where to compute", "choices": ("auto", "cpu", "cuda")},
    )
    download: bool = field(
        default=True, metadata={"help": "download the dataset when no copy is found"}
    )
    executor: str = field(
        default="local", metadata={"help": lambda: listing(EXECUTORS), "choices": EXECUTORS}
    )
    workers: int = field(
        default=1,
        metadata={"help": "run cells in this many local processes, the torch threads "
                  "shared between them"},
    )  # fmt: skip
    ray_address: str | None = field(
        default=None,
        metadata={"help": "address of an existing Ray cluster, e.g. 10.0.0.1:6379 "
                  "(default: start a local one)"},
    )  # fmt: skip
    log: tuple[str, ...] = field(
        default=("csv",),
        metadata={"help": lambda: "comma-separated loggers of each training run's epochs, "
                  "per-layer sparsity and results: " + listing(LOGGERS),
                  "choices": lambda: LOGGERS, "what": "logger"},
    )  # fmt: skip
    threads: int | None = field(
        default=None,
        metadata={"help": "torch threads per cell (default: torch's thread count, which "
                  "follows OMP_NUM_THREADS, shared between the workers; ray: 1). Results are "
                  "identical across executors and worker counts for the same threads per cell"},
    )  # fmt: skip


def from_values(
    values: Mapping[str, Any], run_defaults: RunOptions | None = None
) -> tuple[StudyConfig, RunOptions]:
    """A study's configuration and run options from settings by name, as the command
    line and sweep files give them: ``Start``'s and ``RunOptions``' fields by their
    names, the configuration's by dotted path (``configure``)."""
    groups: dict[str, dict[str, Any]] = {"start": {}, "run": {}, "config": {}}
    for path, value in values.items():
        group = "start" if path in _START else "run" if path in _RUN else "config"
        groups[group][path] = value
    start = apply(Start(), groups["start"])
    return configure(groups["config"], start), apply(run_defaults or RunOptions(), groups["run"])


def start_settings() -> list[Setting]:
    return settings_of(Start, {"": Start()})


def study_settings(skip: tuple[str, ...] = ()) -> list[Setting]:
    """Every setting of a study by name, its default each recipe's."""
    return settings_of(StudyConfig, RECIPES, skip)


def run_settings(defaults: RunOptions | None = None, skip: tuple[str, ...] = ()) -> list[Setting]:
    return settings_of(RunOptions, {"": defaults or RunOptions()}, skip)


def every_setting() -> list[Setting]:
    """What a study takes by name: where it starts, what it computes, how it runs."""
    return start_settings() + study_settings() + run_settings()


_START = {f.name for f in fields(Start)}
_RUN = {f.name for f in fields(RunOptions)}


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
