"""The study: train once, prune at every k by every method, fine-tune with masks held.

This is the only module that knows the whole sequence. Each unit of work (the
base model; one method at one k) is stored under an id hashed from its
configuration, so a rerun reuses what is finished, and results tables are
rebuilt from the stored cells.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.compact import compact
from prunelab.config import canonical, config_id, read_config, to_json
from prunelab.data import DATASETS, DataError, Dataset, Split, load_dataset
from prunelab.executors import Execution, run_cells
from prunelab.export import (
    OnnxModel,
    compacted_config,
    dense_bytes,
    load_sparse,
    save_onnx,
    save_sparse,
    to_csr,
)
from prunelab.metrics import (
    flops,
    latency_ms,
    nonzero_parameters,
    per_layer,
    sparse_flops,
    units_removed,
    weight_sparsity,
)
from prunelab.migrate import ensure_migrated, migrate_ids
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.paths import RunPaths
from prunelab.provenance import environment
from prunelab.prune import PruneMethod, check_k, prune
from prunelab.rundir import RunLock, check_compatible
from prunelab.schedules import Job, Outcome, Schedule, finetune, run_schedule
from prunelab.storage import atomic_write_text, load_state_dict, save_state_dict
from prunelab.train import TrainConfig, evaluate, train

DEFAULT_KS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)

RESULT_COLUMNS = (
    "method", "structure", "criterion", "scope", "schedule", "seed", "k", "phase", "sparsity",
    "units_removed",
    "test_accuracy", "test_loss", "val_accuracy", "val_loss", "seconds",
    "params", "bytes_dense", "bytes_sparse", "flops_dense", "flops", "latency_ms_b1",
    "latency_ms_b256",
)  # fmt: skip
LAYER_COLUMNS = (
    "method", "seed", "k", "layer", "weights", "sparsity", "units", "units_removed",
)  # fmt: skip
EPOCH_COLUMNS = (
    "method", "seed", "k", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "seconds",
)  # fmt: skip


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
            raise ValueError(f"train_limit must be positive, got {self.train_limit}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be positive, got {self.calibration_size}")
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
    executor: str = "local"  # or "ray"
    workers: int = 1  # local processes running cells
    ray_address: str | None = None  # an existing Ray cluster; None starts a local one
    threads: int | None = None  # torch threads per cell; None: cores / workers (Ray: 1)


@dataclass
class StudyResult:
    paths: RunPaths
    dense: dict
    results: list[dict]
    epochs: list[dict]
    layers: list[dict]
    figures: list[Path]
    failures: list[dict] = field(default_factory=list)  # {method, k, seed, error} per cell


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose from auto, cpu, cuda")
    return torch.device(name)


def study_cells(config: StudyConfig) -> list[tuple[StudyConfig, PruneMethod, float]]:
    """Every (per-seed configuration, method, k) of the grid, in the tables' order."""
    methods = [PruneMethod.parse(m) for m in config.methods]
    return [(c, method, k) for c in config.per_seed() for method in methods for k in config.ks]


def run_study(config: StudyConfig, options: RunOptions | None = None) -> StudyResult:
    """Run (or resume) a study and write its tables and figures.

    The run directory is locked for the duration, and refused if it holds a study
    with a different configuration outside the grid. The dense models are trained
    first; the cells not yet finished then run on ``options``' executor. A cell that
    fails is recorded with its error and the others go on; ``StudyResult.failures``
    lists them, and a rerun retries them.
    """
    options = options or RunOptions()
    execution = Execution(options.executor, options.workers, options.ray_address, options.threads)
    execution.check()
    paths = RunPaths(Path(options.out))
    device = resolve_device(options.device)
    with RunLock(paths.root):
        check_compatible(paths.config, config)
        migrate_ids(paths, config)
        provenance = environment(device, execution.threads_per_cell)
        atomic_write_text(paths.config, to_json(config, provenance))
        bases = _bases_for(config, options)
        try:
            dense = mean_dense([bases.get(c)[2] for c in config.per_seed()])
            cells = study_cells(config)
            pending = [
                (c, m.name, k) for c, m, k in cells if not paths.cell(c.cell_id(m, k)).exists()
            ]
            errors = run_cells(pending, cell_work, execution, (options,))
        finally:
            _BASES.pop(_bases_key(config, options), None)
        failures = [_record_failure(paths, *pending[i], error) for i, error in errors.items()]
        return _collect(config, paths, dense, failures)


def _collect(
    config: StudyConfig, paths: RunPaths, dense: dict, failures: list[dict]
) -> StudyResult:
    """The tables and figures, from the finished cells in the grid's order."""
    results, epochs, layers = [], [], []
    for cell_config, method, k in study_cells(config):
        cell_path = paths.cell(cell_config.cell_id(method, k))
        if cell_path.exists():
            cell = _with_defaults(json.loads(cell_path.read_text()), cell_config.seed)
            results += cell["results"]
            epochs += cell["epochs"]
            layers += cell["layers"]
    if not results:
        raise CellsFailedError(failures)
    _write_csv(paths.results, RESULT_COLUMNS, results)
    _write_csv(paths.epochs, EPOCH_COLUMNS, epochs)
    _write_csv(paths.layers, LAYER_COLUMNS, layers)
    _write_csv(paths.summary, SUMMARY_COLUMNS, summarize(results))
    from prunelab import plots  # matplotlib: imported when drawing, not on every command

    figures = plots.study_figures(results, epochs, dense, paths.figures)
    return StudyResult(paths, dense, results, epochs, layers, figures, failures)


class CellsFailedError(RuntimeError):
    """Every cell of a study failed."""

    def __init__(self, failures: list[dict]):
        first = failures[0]["error"] if failures else "no cells"
        super().__init__(f"every cell failed ({len(failures)}); the first: {first}")
        self.failures = failures


def _record_failure(
    paths: RunPaths, config: StudyConfig, method_name: str, k: float, error: str
) -> dict:
    failure = {"method": method_name, "k": k, "seed": config.seed, "error": error}
    method = PruneMethod.parse(method_name)
    atomic_write_text(paths.cell_failure(config.cell_id(method, k)), json.dumps(failure))
    return failure


# Each process keeps its dataset and base models between the cells it runs.
_BASES: dict[tuple, BaseModels] = {}


def _bases_key(config: StudyConfig, options: RunOptions) -> tuple:
    return (config.dataset, config.val_size, config.train_limit, str(options.data_dir),
            options.download, options.device, str(options.out))  # fmt: skip


def _bases_for(config: StudyConfig, options: RunOptions) -> BaseModels:
    key = _bases_key(config, options)
    if key not in _BASES:
        device = resolve_device(options.device)
        data = load_study_data(config, options, device)
        _BASES[key] = BaseModels(data, RunPaths(Path(options.out)), device)
    return _BASES[key]


def cell_work(options: RunOptions, config: StudyConfig, method_name: str, k: float) -> None:
    """Run one cell (in whatever process an executor chose) and store it."""
    run_cell(config, PruneMethod.parse(method_name), k, _bases_for(config, options))


class BaseModels:
    """The trained dense models of a run directory, loaded (or trained) once each."""

    def __init__(self, data: Dataset, paths: RunPaths, device: torch.device):
        self.data, self.paths, self.device = data, paths, device
        self._loaded: dict[tuple, tuple[dict, dict | None, dict]] = {}

    def get(self, config: StudyConfig) -> tuple[dict, dict | None, dict]:
        """(state, rewind state or None, record) of ``config``'s base model."""
        key = (config.base_id(), config.schedule.name == "lottery", config.schedule.rewind_steps)
        if key not in self._loaded:
            self._loaded[key] = _base_model(config, self.data, self.paths, self.device)
        return self._loaded[key]


def run_cell(config: StudyConfig, method: PruneMethod, k: float, bases: BaseModels) -> dict:
    """One (method, k) of ``config``: loaded if stored, else computed and stored atomically."""
    paths = bases.paths
    cell_path = paths.cell(config.cell_id(method, k))
    if cell_path.exists():
        return _with_defaults(json.loads(cell_path.read_text()), config.seed)
    base_state, rewind_state, _ = bases.get(config)
    cell = _run_cell(config, base_state, rewind_state, method, k, bases.data, bases.device,
                     paths.cell_model(cell_path.stem))  # fmt: skip
    cell["provenance"] = environment(bases.device)
    atomic_write_text(cell_path, json.dumps(cell, indent=1))
    paths.cell_failure(cell_path.stem).unlink(missing_ok=True)
    oneshot, final = cell["results"][:2]
    after = "fine-tuned" if config.schedule.name == "oneshot" else config.schedule.name
    tqdm.write(
        f"{method.name:>8} k={k:<5g} seed {config.seed} test accuracy one-shot "
        f"{oneshot['test_accuracy']:.4f} -> {after} {final['test_accuracy']:.4f} "
        f"({final['seconds']:.1f} s)"
    )
    return cell


def _with_defaults(cell: dict, seed: int) -> dict:
    """A stored cell, with the columns that cells stored before schedules and seeds lack."""
    for row in cell["results"]:
        row.setdefault("schedule", "oneshot")
    for row in cell["results"] + cell["epochs"] + cell["layers"]:
        row.setdefault("seed", seed)
    return cell


def load_study_data(config: StudyConfig, options: RunOptions, device: torch.device) -> Dataset:
    data = load_dataset(
        config.dataset,
        data_dir=options.data_dir,
        val_size=config.val_size,
        train_limit=config.train_limit,
        download=options.download,
    )
    return _to_device(data, device)


def _to_device(data: Dataset, device: torch.device) -> Dataset:
    def move(split: Split) -> Split:
        return Split(split.x.to(device), split.y.to(device))

    return Dataset(data.name, data.source, move(data.train), move(data.val), move(data.test))


def _base_model(
    config: StudyConfig, data: Dataset, paths: RunPaths, device: torch.device
) -> tuple[dict, dict | None, dict]:
    """Train the dense model once; later runs with the same settings load it.

    Returns its state, the state ``rewind_steps`` into its training (lottery
    schedule only; None otherwise) and its record.
    """
    base_id = config.base_id()
    model = build_model(config.model, data.num_classes, seed=config.seed).to(device)
    weights, record = paths.base_model(base_id), paths.base_record(base_id)
    lottery = config.schedule.name == "lottery"
    rewind_path = paths.rewind_model(base_id, config.schedule.rewind_steps)
    need_training = not (weights.exists() and record.exists())
    if not need_training:
        try:
            load_state_dict(model, weights)
            dense = json.loads(record.read_text())
        except Exception as err:  # a damaged file must not take a traceback with it
            raise DataError(
                f"cannot load the stored dense model {weights} ({err}); delete it to retrain"
            ) from err
    if need_training or (lottery and not rewind_path.exists()):
        # Training is deterministic from its seed: a rerun made only for a missing
        # rewind snapshot retraces the stored model's path.
        trainee = model
        if not need_training:
            trainee = build_model(config.model, data.num_classes, seed=config.seed).to(device)
        snapshot = _Snapshot(config.schedule.rewind_steps, trainee)
        history = train(trainee, data.train, data.val, config.train, seed=config.seed,
                        after_step=snapshot, desc="dense")  # fmt: skip
        save_state_dict(snapshot.model, rewind_path)
        if need_training:
            test, val = evaluate(model, data.test), evaluate(model, data.val)
            dense = {
                "base_id": base_id,
                "test_accuracy": test.accuracy,
                "test_loss": test.loss,
                "val_accuracy": val.accuracy,
                "val_loss": val.loss,
                "history": [asdict(r) for r in history],
            }
            save_state_dict(model, weights)
            atomic_write_text(record, json.dumps(dense, indent=1))
            tqdm.write(f"dense model: test accuracy {test.accuracy:.4f} (saved to {weights})")
    state = {name: t.clone() for name, t in model.state_dict().items()}
    rewind = None
    if lottery:
        rewound = build_model(config.model, data.num_classes).to(device)
        load_state_dict(rewound, rewind_path)
        rewind = rewound.state_dict()
    return state, rewind, dense


class _Snapshot:
    """An ``after_step`` callback keeping a copy of the model after ``steps`` steps."""

    def __init__(self, steps: int, model: nn.Module):
        self.steps, self.taken = steps, 0
        self.model = copy.deepcopy(model)  # step 0: the initial weights

    def __call__(self, model: nn.Module) -> None:
        self.taken += 1
        if self.taken == self.steps:
            self.model.load_state_dict(model.state_dict())


def mean_dense(records: list[dict]) -> dict:
    """The dense figures averaged over seeds (the record itself for one seed)."""
    if len(records) == 1:
        return records[0]
    keys = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")
    return {key: sum(r[key] for r in records) / len(records) for key in keys}


def _run_cell(
    config: StudyConfig,
    base_state: dict,
    rewind_state: dict | None,
    method: PruneMethod,
    k: float,
    data: Dataset,
    device: torch.device,
    model_path: Path,
) -> dict:
    model = build_model(config.model, data.num_classes).to(device)
    model.load_state_dict(base_state)
    batches = None
    if method.needs_data:
        batches = calibration_batches(data.train, config.calibration_size, config.seed)
    job = Job(method, k, data, config.finetune, batches, config.prune_last, config.seed)
    measure = partial(_measure, data=data, method=method, k=k, config=config)
    start = time.perf_counter()
    masks = prune(model, method, k, batches=batches, include_last=config.prune_last,
                  seed=config.seed)  # fmt: skip
    oneshot = measure(model, "oneshot", time.perf_counter() - start)
    start = time.perf_counter()
    if config.schedule.name == "oneshot":
        outcome = Outcome(finetune(model, masks, job, config.finetune, config.seed), masks)
    else:
        model.load_state_dict(base_state)
        outcome = run_schedule(
            config.schedule, model, job, rewind_state=rewind_state,
            train_config=config.train, model_config=config.model,
        )  # fmt: skip
    rows = [oneshot, measure(model, "finetuned", time.perf_counter() - start)]
    if outcome.control is not None:
        rows.append(measure(outcome.control, "reinit", math.nan))
    # size and speed of the deployable form: the same pattern of zeros in every row
    deploy = _deployment(model, config, method, data.test.x[:1], model_path)
    for row in rows:
        row.update(deploy)
    tag = {"method": method.name, "seed": config.seed, "k": k}
    epochs = [
        {**tag, "epoch": 0, "train_loss": math.nan, "train_accuracy": math.nan,
         "val_loss": oneshot["val_loss"], "val_accuracy": oneshot["val_accuracy"],
         "seconds": 0.0}
    ] + [{**tag, **asdict(r)} for r in outcome.history]  # fmt: skip
    layers = prunable_layers(model, include_last=config.prune_last)
    return {
        "method": method.name,
        "k": k,
        "results": rows,
        "epochs": epochs,
        "layers": [{**tag, **row} for row in per_layer(layers)],
    }


def _deployment(
    model: nn.Module, config: StudyConfig, method: PruneMethod, example: torch.Tensor,
    model_path: Path,
) -> dict:  # fmt: skip
    """Store the pruned model sparse; count the FLOPs per sample of its dense form and of
    its deployable form (compacted for units; for weights, those of non-zero weights) and
    time the latter (for weights, the faster of dense and CSR sparse)."""
    bytes_sparse = save_sparse(model, config.model, model_path)
    if method.structure == "unit":
        forms = [compact(model)]
        deployed_flops = flops(forms[0], example)
    else:
        forms = [model, to_csr(model)] if example.device.type == "cpu" else [model]
        deployed_flops = sparse_flops(model, prunable_layers(model, include_last=True), example)
    latency = {
        f"latency_ms_b{batch}": min(latency_ms(form, example, batch) for form in forms)
        for batch in (1, 256)
    }
    return {
        "params": nonzero_parameters(model),
        "bytes_dense": dense_bytes(model),
        "bytes_sparse": bytes_sparse,
        "flops_dense": flops(model, example),
        "flops": deployed_flops,
        **latency,
    }


def calibration_batches(
    split: Split, size: int, seed: int, batch_size: int = 256
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``size`` training examples in a seeded random order, as (input, label) batches."""
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=generator)[:size].to(split.x.device)
    return [
        (split.x[idx[i : i + batch_size]], split.y[idx[i : i + batch_size]])
        for i in range(0, len(idx), batch_size)
    ]


def _measure(
    model: nn.Module, phase: str, seconds: float, *, data: Dataset, method: PruneMethod,
    k: float, config: StudyConfig,
) -> dict:  # fmt: skip
    layers = prunable_layers(model, include_last=config.prune_last)
    test, val = evaluate(model, data.test), evaluate(model, data.val)
    return {
        "method": method.name,
        "structure": method.structure,
        "criterion": method.criterion,
        "scope": method.scope,
        "schedule": config.schedule.name,
        "seed": config.seed,
        "k": k,
        "phase": phase,
        "sparsity": weight_sparsity(layers),
        "units_removed": units_removed(layers),
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "val_accuracy": val.accuracy,
        "val_loss": val.loss,
        "seconds": seconds,
    }


SUMMARY_COLUMNS = (
    "method", "schedule", "k", "phase", "seeds", "sparsity", "units_removed",
    "test_accuracy_mean", "test_accuracy_std", "test_loss_mean", "test_loss_std",
    "val_accuracy_mean", "val_accuracy_std",
)  # fmt: skip


def summarize(results: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each (method, k, phase)."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["method"], row["schedule"], row["k"], row["phase"]), []).append(row)
    summary = []
    for (method, schedule, k, phase), rows in groups.items():
        entry = {"method": method, "schedule": schedule, "k": k, "phase": phase,
                 "seeds": len(rows), "sparsity": _mean([r["sparsity"] for r in rows]),
                 "units_removed": _mean([r["units_removed"] for r in rows])}  # fmt: skip
        for metric in ("test_accuracy", "test_loss", "val_accuracy"):
            values = [r[metric] for r in rows]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean(values), _std(values)
        summary.append(entry)
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    """Sample standard deviation; 0 for a single value."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def load_config(path: str | Path) -> StudyConfig:
    return read_config(path, StudyConfig)


def summary_table(result: StudyResult) -> str:
    """A plain-text table: one line per method and k, one-shot and after the schedule
    (the mean ± standard deviation over seeds where there are several)."""
    summary = summarize(result.results)
    several = any(row["seeds"] > 1 for row in summary)
    width = 15 if several else 9

    def accuracy(row: dict) -> str:
        text = f"{row['test_accuracy_mean']:.4f}"
        return text + (f" ± {row['test_accuracy_std']:.4f}" if several else "")

    lines = [
        f"dense test accuracy {result.dense['test_accuracy']:.4f}",
        f"{'method':>8} {'k':>5} {'sparsity':>8} {'units':>6} {'one-shot':>{width}} "
        f"{'final':>{width}}",
    ]
    by_cell: dict[tuple, dict] = {}
    for row in summary:
        by_cell.setdefault((row["method"], row["k"]), {})[row["phase"]] = row
    for (method, k), phases in by_cell.items():
        final = phases["finetuned"]
        lines.append(
            f"{method:>8} {k:>5g} {final['sparsity']:>8.4f} {final['units_removed']:>6.3f}"
            f" {accuracy(phases['oneshot']):>{width}} {accuracy(final):>{width}}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Exported:
    path: Path
    bytes: int
    params: int
    test_accuracy: float


def export_cell(
    run_dir: str | Path,
    method: str,
    k: float,
    form: str,
    out: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    codebook_bits: int | None = None,
    data_dir: Path | None = None,
) -> Exported:
    """Export the fine-tuned model of one (method, k) of a finished study.

    ``form`` "sparse" keeps only non-zero weights; "compact" removes pruned units
    and stores a smaller dense model; "onnx" writes the compacted model as ONNX
    (run by onnxruntime). The file is reloaded and evaluated on the test set, so
    the accuracy reported is that of what was written. ``codebook_bits`` shares
    the sparse form's values through a per-layer k-means codebook.
    """
    if form not in EXPORT_FORMS:
        raise ValueError(f"unknown format {form!r}; choose from {', '.join(EXPORT_FORMS)}")
    if codebook_bits is not None and form != "sparse":
        raise ValueError("a codebook applies to the sparse format only")
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise ValueError(f"{run_dir} is not a study run directory (it has no config.json)")
    config = load_config(paths.config)
    ensure_migrated(paths, config)
    wanted = PruneMethod.parse(method)
    names = [PruneMethod.parse(m).name for m in config.methods]
    if wanted.name not in names:
        raise ValueError(f"method {wanted.name!r} is not in this run; it has {', '.join(names)}")
    stored_k = [x for x in config.ks if abs(x - k) < 1e-9]
    if not stored_k:
        raise ValueError(
            f"k={k:g} is not in this run; it has {', '.join(f'{x:g}' for x in config.ks)}"
        )
    model_path = paths.cell_model(config.cell_id(wanted, stored_k[0]))
    if not model_path.exists():
        raise ValueError(f"{wanted.name} at k={k:g} has not finished; rerun the study to finish it")
    model, model_config = load_sparse(model_path)
    data = load_dataset(
        config.dataset, data_dir=data_dir, val_size=config.val_size, train_limit=config.train_limit
    )
    if form == "sparse":
        size = save_sparse(model, model_config, out, dtype, codebook_bits=codebook_bits)
        written, _ = load_sparse(out)
        runner = written
    elif form == "compact":
        small = compact(model)
        size = save_sparse(small, compacted_config(model_config, small), out, dtype, sparse=False)
        written, _ = load_sparse(out)
        runner = written
    else:
        written = compact(model)
        size = save_onnx(written, out, data.test.x[:1])
        runner = OnnxModel(out)
    accuracy = evaluate(runner, data.test).accuracy
    return Exported(Path(out), size, nonzero_parameters(written), accuracy)


EXPORT_FORMS = ("sparse", "compact", "onnx")
