"""The study: train once, prune at every k by every method, fine-tune with masks held.

This is the only module that knows the whole sequence. Each unit of work (the
base model; one method at one k) is stored under an id hashed from its
configuration, so a rerun reuses what is finished, and results tables are
rebuilt from the stored cells.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.bases import (
    BaseModels,
    bases_for,
    fitted,
    forget_bases,
    resolve_device,
)
from prunelab.compact import compact
from prunelab.config import to_json
from prunelab.csr import to_csr
from prunelab.data import Dataset
from prunelab.executors import Execution, run_cells
from prunelab.export import dense_bytes, save_sparse
from prunelab.loggers import check_loggers
from prunelab.metrics import (
    flops,
    latency_ms,
    nonzero_parameters,
    per_layer,
    sparse_flops,
    units_removed,
    weight_sparsity,
)
from prunelab.migrate import migrate_ids
from prunelab.models import ModelConfig, build_model, is_chain, prunable_layers
from prunelab.paths import RunPaths
from prunelab.provenance import environment
from prunelab.prune import PruneMethod
from prunelab.prune.groups import Graph, NoGroupError, dead
from prunelab.prune.method import file_safe
from prunelab.results import (
    EPOCH_COLUMNS,
    LAYER_COLUMNS,
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    mean_dense,
    renamed,
    summarize,
    write_csv,
)
from prunelab.rundir import RunLock, check_compatible
from prunelab.schedules import DenseRun, Job, Outcome, finetune, prune_job, run_schedule
from prunelab.storage import atomic_write_text
from prunelab.study_config import RunOptions, StudyConfig, study_cells
from prunelab.train import EpochRecord, evaluate


@dataclass
class StudyResult:
    paths: RunPaths
    dense: dict
    results: list[dict]
    epochs: list[dict]
    layers: list[dict]
    figures: list[Path]
    failures: list[dict] = field(default_factory=list)  # {method, k, seed, error} per cell


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
    check_loggers(options.log)
    paths = RunPaths(Path(options.out))
    device = resolve_device(options.device)
    with RunLock(paths.root):
        check_compatible(paths.config, config)
        migrate_ids(paths, config)
        bases = bases_for(config, options)
        try:
            dense = mean_dense([bases.get(c)[2] for c in config.per_seed()])
            # written once the data and the model are known to work: a mistake in them
            # leaves no configuration that the corrected command would be refused by
            provenance = environment(device, execution.threads_per_cell)
            atomic_write_text(paths.config, to_json(config, provenance))
            cells = study_cells(config)
            pending = [
                (c, m.name, k) for c, m, k in cells if not paths.cell(c.cell_id(m, k)).exists()
            ]
            errors = run_cells(pending, cell_work, execution, (options,))
        finally:
            forget_bases(config, options)
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
    write_csv(paths.results, RESULT_COLUMNS, results)
    write_csv(paths.epochs, EPOCH_COLUMNS, epochs)
    write_csv(paths.layers, LAYER_COLUMNS, layers)
    write_csv(paths.summary, SUMMARY_COLUMNS, summarize(results))
    from prunelab import plots  # matplotlib: imported when drawing, not on every command

    figures = plots.study_figures(results, epochs, dense, paths.figures, config.metric)
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


def cell_work(options: RunOptions, config: StudyConfig, method_name: str, k: float) -> None:
    """Run one cell (in whatever process an executor chose) and store it."""
    run_cell(config, PruneMethod.parse(method_name), k, bases_for(config, options))


def run_cell(config: StudyConfig, method: PruneMethod, k: float, bases: BaseModels) -> dict:
    """One (method, k) of ``config``: loaded if stored, else computed and stored atomically."""
    paths = bases.paths
    cell_path = paths.cell(config.cell_id(method, k))
    if cell_path.exists():
        return _with_defaults(json.loads(cell_path.read_text()), config.seed)
    base_state, rewind_state, _ = bases.get(config)
    log = bases.loggers(config, f"{file_safe(method.name)}-k{k:g}-seed{config.seed}",
                        method=method.name, k=k, schedule=config.schedule.name)  # fmt: skip
    try:
        cell = _run_cell(config, base_state, rewind_state, method, k, bases.data, bases.device,
                         paths.cell_model(cell_path.stem), log.of("finetune"))  # fmt: skip
        log.summary(_summary(cell))
    finally:
        log.close()
    cell["provenance"] = environment(bases.device)
    atomic_write_text(cell_path, json.dumps(cell, indent=1))
    paths.cell_failure(cell_path.stem).unlink(missing_ok=True)
    oneshot, final = cell["results"][:2]
    after = "fine-tuned" if config.schedule.name == "oneshot" else config.schedule.name
    tqdm.write(
        f"{method.name:>8} k={k:<5g} seed {config.seed} test {config.metric.name} one-shot "
        f"{oneshot['test_metric']:.4f} -> {after} {final['test_metric']:.4f} "
        f"({final['seconds']:.1f} s)"
    )
    return cell


def _summary(cell: dict) -> dict[str, float]:
    """What loggers get of a finished cell: each layer's sparsity, the final figures."""
    final = cell["results"][1]
    keys = ("sparsity", "units_removed", "test_metric", "test_loss", "val_metric", "params")
    return {**{f"sparsity/{row['layer']}": row["sparsity"] for row in cell["layers"]},
            **{f"final/{key}": final[key] for key in keys}}  # fmt: skip


def _with_defaults(cell: dict, seed: int) -> dict:
    """A stored cell, with the columns that cells stored before schedules and seeds lack,
    and its metric columns under today's names."""
    for row in cell["results"]:
        row.setdefault("schedule", "oneshot")
    for row in cell["results"] + cell["epochs"] + cell["layers"]:
        row.setdefault("seed", seed)
        renamed(row)
    return cell


def _run_cell(
    config: StudyConfig,
    base_state: dict,
    rewind_state: dict | None,
    method: PruneMethod,
    k: float,
    data: Dataset,
    device: torch.device,
    model_path: Path,
    log: Callable[[EpochRecord], None] | None = None,
) -> dict:
    model_config = fitted(config, data)
    model = build_model(model_config).to(device)
    model.load_state_dict(base_state)
    batches = None
    if method.needs_data:
        batches = data.train.sample(config.calibration_size, config.seed)
    job = Job(method, k, data, config.finetune, batches, config.prune_last, config.seed,
              config.ignore, config.include, log)  # fmt: skip
    measured = _Measured.of(model, data.test.head(2), config)
    measure = partial(_measure, data=data, method=method, k=k, config=config, measured=measured)
    start = time.perf_counter()
    masks = prune_job(model, job, k)
    oneshot = measure(model, "oneshot", time.perf_counter() - start)
    if log is not None:  # epoch 0: just pruned, as epochs.csv has it
        log(EpochRecord(0, math.nan, math.nan, oneshot["val_loss"], oneshot["val_metric"], 0.0))
    start = time.perf_counter()
    if config.schedule.name == "oneshot":
        outcome = Outcome(finetune(model, masks, job, config.finetune, config.seed), masks)
    else:
        model.load_state_dict(base_state)
        dense = None
        if rewind_state is not None:
            fresh = lambda seed: build_model(model_config, seed=seed)  # noqa: E731
            dense = DenseRun(rewind_state, config.train, fresh)
        outcome = run_schedule(config.schedule, model, job, dense)
    rows = [oneshot, measure(model, "finetuned", time.perf_counter() - start)]
    if outcome.control is not None:
        rows.append(measure(outcome.control, "reinit", math.nan))
    # size and speed of the deployable form: the same pattern of zeros in every row
    deploy = _deployment(model, model_config, method, data.test.head(1), model_path)
    for row in rows:
        row.update(deploy)
    tag = {"method": method.name, "seed": config.seed, "k": k}
    epochs = [
        {**tag, "epoch": 0, "train_loss": math.nan, "train_metric": math.nan,
         "val_loss": oneshot["val_loss"], "val_metric": oneshot["val_metric"],
         "seconds": 0.0}
    ] + [{**tag, **asdict(r)} for r in outcome.history]  # fmt: skip
    layers = measured.layers(model)
    return {
        "method": method.name,
        "k": k,
        "results": rows,
        "epochs": epochs,
        "layers": [{**tag, **row} for row in per_layer(layers)],
    }


def _deployment(
    model: nn.Module, model_config: ModelConfig, method: PruneMethod, example: torch.Tensor,
    model_path: Path,
) -> dict:  # fmt: skip
    """Store the pruned model sparse; count the FLOPs per sample of its dense form and of
    its deployable form (compacted for units; for weights, those of non-zero weights) and
    time the latter (for weights, the faster of dense and CSR sparse)."""
    bytes_sparse = save_sparse(model, model_config, model_path, pattern=method.pattern)
    if method.structure == "unit":
        forms = [compact(model, example)]
        deployed_flops = flops(forms[0], example)
    else:
        forms = [model, to_csr(model, example=example)] if example.device.type == "cpu" else [model]
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


@dataclass(frozen=True)
class _Measured:
    """What a cell measures of the models it makes (the pruned one, the lottery's
    control), found once: the layers pruning may touch, by name (of a chain, all but the
    logits layer; of any other model, all but the output layers of its trace), and, for
    a model that is not a chain, its coupled groups (channels, MLP units, heads)."""

    names: tuple[str, ...]
    groups: list | None  # None: a chain, whose units are its layers' rows

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor, config: StudyConfig) -> _Measured:
        if is_chain(model):
            return cls(tuple(prunable_layers(model, include_last=config.prune_last)), None)
        graph = Graph(model, example.to(next(model.parameters()).device))
        outputs = () if config.prune_last else graph.output_layers()
        names = tuple(name for name in graph.layers() if name not in outputs)
        try:
            groups = graph.groups(config.ignore, config.include or None, config.prune_last)
        except NoGroupError:  # a model pruned by weights only (LayerNorm everywhere, say)
            groups = []
        return cls(names, groups)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return {name: model.get_submodule(name) for name in self.names}

    def units_removed(self, model: nn.Module) -> float:
        """Of each layer's rows in a chain; in any other model, of its groups' units, as
        unit pruning counts them."""
        if self.groups is None:
            return units_removed(self.layers(model))
        if not self.groups:
            return 0.0
        removed = sum(int(dead(model, g).sum()) for g in self.groups)
        return removed / sum(g.size for g in self.groups)


def _measure(
    model: nn.Module, phase: str, seconds: float, *, data: Dataset, method: PruneMethod,
    k: float, config: StudyConfig, measured: _Measured,
) -> dict:  # fmt: skip
    layers = measured.layers(model)
    test, val = (
        evaluate(model, data.test, task=data.task),
        evaluate(model, data.val, task=data.task),
    )
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
        "units_removed": measured.units_removed(model),
        "test_metric": test.metric,
        "test_loss": test.loss,
        "val_metric": val.metric,
        "val_loss": val.loss,
        "seconds": seconds,
    }
