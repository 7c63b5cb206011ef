"""The pruning budget: the largest k whose pruned network stays within a tolerance
of the dense model's validation metric, found by bracketing and bisection.

The search assumes the metric worsens as k grows (true of every curve we measured,
up to noise smaller than typical tolerances); each probe is one pruned and
fine-tuned network. Two front ends share it: ``budget_study`` for the built-in
models and datasets (probes are study cells, stored and reused), and
``find_budget`` for any ``nn.Module`` with data loaders.
"""

from __future__ import annotations

__all__ = ["K_MAX", "BudgetAnswer", "BudgetResult", "Probe", "Rewind", "budget_study",
           "find_budget", "search"]  # fmt: skip

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.bases import BaseModels, load_study_data, resolve_device
from prunelab.budget_search import (
    DEFAULT_RESOLUTION,
    K_MAX,
    BudgetAnswer,
    Probe,
    search,
)
from prunelab.compact import CompactionError, compact
from prunelab.data import Dataset
from prunelab.export import compacted_config, load_sparse, save_sparse
from prunelab.loggers import check_loggers
from prunelab.models import evaluating, first_tensor
from prunelab.options import Setting, apply, settings_of
from prunelab.paths import RunPaths
from prunelab.prune import PruneMethod
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.method import STRUCTURES, file_safe
from prunelab.rundir import RunLock
from prunelab.schedules import SCHEDULES, DenseRun, Job, Schedule, run_schedule
from prunelab.splits import StreamSplit
from prunelab.storage import atomic_write_text
from prunelab.study import run_cell
from prunelab.study_config import (
    RunOptions,
    StudyConfig,
    from_values,
    run_settings,
    start_settings,
    study_settings,
)
from prunelab.tasks import Task, task_of
from prunelab.train import TrainConfig, evaluate


@dataclass(frozen=True)
class Search:
    """What ``budget_study`` looks for (its keywords), as settings by name."""

    structure: str = field(
        default="unit", metadata={"help": "prune weights or units", "choices": STRUCTURES}
    )
    criteria: tuple[str, ...] = field(
        default=("magnitude",),
        metadata={"help": lambda: f"comma-separated criteria: {', '.join(CRITERIA)}",
                  "choices": lambda: CRITERIA, "what": "criterion"},
    )  # fmt: skip
    schedules: tuple[str, ...] = field(
        default=("oneshot",),
        metadata={"help": lambda: f"comma-separated schedules: {', '.join(SCHEDULES)}",
                  "choices": lambda: SCHEDULES, "what": "schedule"},
    )  # fmt: skip
    max_drop: float | None = field(
        default=None,
        metadata={
            "help": "tolerated worsening of the metric, in its units (default: 1 point "
            "of accuracy, 0.01 of R², else 1% of the dense model's value)"
        },
    )
    resolution: float = field(
        default=DEFAULT_RESOLUTION, metadata={"help": "resolution of k (0.005: half a point)"}
    )


BUDGET_OPTIONS = RunOptions(out=Path("runs/budget"))


def budget_settings() -> list[Setting]:
    """What a budget search takes by name: what it looks for, and the settings of a
    study but those it picks itself (methods, ks, schedules) and the executor's (it
    runs its probes one by one)."""
    return (
        settings_of(Search, {"": Search()})
        + [s for s in start_settings() if s.path != "scope"]
        + study_settings(skip=("methods", "ks", "seeds", "schedule.name"))
        + run_settings(BUDGET_OPTIONS, skip=("executor", "workers", "ray_address", "threads"))
    )


@dataclass
class BudgetResult:
    answer: BudgetAnswer
    model: nn.Module  # the pruned, fine-tuned model at answer.k (the dense copy if k = 0)


@dataclass(frozen=True)
class Rewind:
    """What the lottery schedule needs of a model's dense training: its weights early
    in it (``rewind_steps`` in), and the recipe it was trained with. ``fresh(seed)``
    gives the control's new initialisation (default: a copy of the model with every
    module's ``reset_parameters``, or ``_reset_parameters``, called; give your own where
    a module holds a bare ``nn.Parameter``, such as a positional embedding)."""

    state: dict
    train: TrainConfig
    fresh: Callable[[int], nn.Module] | None = None


def find_budget(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    structure: str = "unit",
    criterion: str = "magnitude",
    schedule: str = "oneshot",
    max_drop: float | None = None,
    finetune: TrainConfig | None = None,
    test_loader: Iterable | None = None,
    resolution: float = DEFAULT_RESOLUTION,
    calibration_size: int = 1024,
    seed: int = 0,
    task: str | Task = "classification",
    rewind: Rewind | None = None,
) -> BudgetResult:
    """How much of ``model`` (trained) can be pruned within ``max_drop`` of its metric?

    The loaders (``DataLoader``s, torch ``Dataset``s or lists of (input, target)
    batches) are read batch by batch, never held whole. ``task`` gives the loss and
    the metric (classification: accuracy, ``max_drop`` in points; lm:
    perplexity, lower is better). Each probe prunes a copy of ``model`` by
    ``structure:criterion`` at k, brings it there by ``schedule`` with ``finetune``,
    and measures the validation metric. The lottery schedule needs ``rewind``: the
    weights early in the model's dense training and how it was trained. ``model``
    itself is left untouched.
    """
    task = task_of(task)
    if max_drop is not None:
        task.metric.check_tolerance(max_drop)
    method = PruneMethod(structure, criterion)
    schedule_config = Schedule(schedule)
    dense_run = _dense_run(schedule, rewind, model)
    finetune = finetune or TrainConfig(epochs=1)
    data = _streamed(model, train_loader, val_loader, test_loader, task)
    test_split = data.test if test_loader is not None else None
    batches = data.train.sample(calibration_size, seed)
    dense_val = evaluate(model, data.val, task=task).metric
    dense_test = evaluate(model, test_split, task=task).metric if test_split is not None else None
    max_drop = task.metric.tolerance_for(dense_val, max_drop)
    models: dict[float, nn.Module] = {}

    def probe(k: float) -> Probe:
        pruned = copy.deepcopy(model)
        job = Job(method, k, data, finetune, batches, include_last=False, seed=seed)
        run_schedule(schedule_config, pruned, job, dense_run)
        models[k] = pruned
        test = evaluate(pruned, test_split, task=task).metric if test_split is not None else None
        return Probe(k, evaluate(pruned, data.val, task=task).metric, test)

    best, probes = search(probe, dense_val, max_drop, resolution, task.metric)
    chosen = models[best.k] if best is not None else copy.deepcopy(model)
    answer = BudgetAnswer.of(method.name, schedule, max_drop, best, probes, dense_val,
                             dense_test, task.metric.name)  # fmt: skip
    return BudgetResult(answer, chosen)


def _dense_run(schedule: str, rewind: Rewind | None, model: nn.Module) -> DenseRun | None:
    """What a rewinding schedule needs, from ``rewind``; None for the others."""
    if not SCHEDULES[schedule].rewinds:
        return None
    if rewind is None:
        raise ValueError(f"the {schedule} schedule rewinds to early dense weights: "
                         "give rewind=Rewind(state, train_config)")  # fmt: skip
    return DenseRun(rewind.state, rewind.train, rewind.fresh or partial(_reinitialised, model))


def _reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every layer's parameters drawn afresh from ``seed``: the
    lottery's control."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if callable(reset):
                reset()
    return fresh


def _streamed(
    model: nn.Module, train: Iterable, val: Iterable, test: Iterable | None, task: Task
) -> Dataset:
    """The loaders as splits read on the model's device (validation standing in for a
    missing test set), checked against the model's outputs on a first batch."""
    device = next(model.parameters()).device
    splits = [
        StreamSplit(source, device) for source in (train, val, test if test is not None else val)
    ]
    try:
        x, y = next(iter(splits[0].batches(2)))
    except StopIteration:
        raise ValueError("the training data gave no batches") from None
    try:
        with torch.no_grad(), evaluating(model):
            output = first_tensor(model(x))
    except Exception as err:
        raise ValueError(f"the model's forward fails on the training data: {err}") from err
    task.check(output, y)
    classes = output.shape[-1] if task.name == "classification" else None
    return Dataset("custom", "loaders", *splits, num_classes=classes, task=task)


def budget_values(values: Mapping[str, Any]) -> tuple[StudyConfig, RunOptions, Search]:
    """A budget search's configuration, run options and goal from settings by name."""
    goal = {name: value for name, value in values.items() if name in _SEARCH}
    config, options = from_values(
        {name: value for name, value in values.items() if name not in _SEARCH}, BUDGET_OPTIONS
    )
    return config, options, apply(Search(), goal)


_SEARCH = {f.name for f in fields(Search)}


def budget_study(
    config: StudyConfig,
    options: RunOptions,
    *,
    structure: str,
    criteria: Iterable[str],
    schedules: Iterable[str],
    max_drop: float | None = None,
    resolution: float = DEFAULT_RESOLUTION,
) -> list[BudgetAnswer]:
    """The budget of a built-in model and dataset, per criterion and schedule.

    Every probe is a study cell of ``config`` in ``options.out``: the base model
    is trained once, and probes already made (by this search, an earlier one or
    a study with the same settings) are read back, not recomputed. Writes
    ``budget.json`` and, per answer, the pruned model (compacted for units,
    sparse for weights) into ``options.out``.
    """
    if max_drop is not None:
        config.metric.check_tolerance(max_drop)
    check_loggers(options.log)
    methods = [PruneMethod(structure, criterion) for criterion in criteria]
    plans = [(m, replace(config.schedule, name=name)) for m in methods for name in schedules]
    paths = RunPaths(Path(options.out))
    device = resolve_device(options.device)
    with RunLock(paths.root):
        answers = _search_all(config, options, plans, paths, device, max_drop, resolution)
        record = [{**asdict(a), "sentence": a.sentence} for a in answers]
        atomic_write_text(paths.budget, json.dumps(record, indent=1))
    return answers


def _search_all(
    config: StudyConfig, options: RunOptions, plans: list[tuple[PruneMethod, Schedule]],
    paths: RunPaths, device: torch.device, max_drop: float | None, resolution: float,
) -> list[BudgetAnswer]:  # fmt: skip
    data = load_study_data(config, options, device)
    bases = BaseModels(data, paths, device, options.log)
    answers = []
    for method, schedule in plans:
        cell_config = replace(config, methods=(method.name,), schedule=schedule, seeds=1)
        dense = bases.get(cell_config)[2]

        def probe(k: float, cell_config=cell_config, method=method) -> Probe:
            final = run_cell(cell_config, method, k, bases)["results"][1]
            return Probe(k, final["val_metric"], final["test_metric"])

        tolerance = config.metric.tolerance_for(dense["val_metric"], max_drop)
        best, probes = search(probe, dense["val_metric"], tolerance, resolution, config.metric)
        answer = BudgetAnswer.of(method.name, schedule.name, tolerance, best, probes,
                                 dense["val_metric"], dense["test_metric"],
                                 config.metric.name)  # fmt: skip
        if best is not None:
            answer.model_file = _save_answer_model(paths, cell_config, method, best.k)
        answers.append(answer)
    return answers


def _save_answer_model(paths: RunPaths, config: StudyConfig, method: PruneMethod, k: float) -> str:
    """The answer's pruned model, in its deployable file: compacted units, sparse weights."""
    model, model_config = load_sparse(paths.cell_model(config.cell_id(method, k)))
    stem = f"budget-{file_safe(method.name)}-{config.schedule.name}-k{k:g}"
    if method.structure == "unit":
        path = paths.budget_model(stem, "compact")
        try:
            small = compact(model)
            save_sparse(small, compacted_config(model_config, small), path, sparse=False)
            return str(path)
        except CompactionError:
            pass  # not a plain chain of built-in layers: stored sparse, below
    path = paths.budget_model(stem, "sparse")
    save_sparse(model, model_config, path)
    return str(path)


def answers_table(answers: list[BudgetAnswer]) -> str:
    lines = [f"{'method':>18} {'schedule':>10} {'k':>7} {'val':>7} {'test':>7} {'dense':>7} probes"]
    for a in answers:
        test = f"{a.test_metric:.4f}" if a.test_metric is not None else "-"
        dense = a.dense_test_metric if a.dense_test_metric is not None else a.dense_val_metric
        lines.append(f"{a.method:>18} {a.schedule:>10} {a.k:>7.4f} {a.val_metric:>7.4f} "
                     f"{test:>7} {dense:>7.4f} {len(a.probes)}")  # fmt: skip
    return "\n".join(lines)
