"""The dense models a study starts from: trained once per configuration, stored in
the run directory, and kept in memory by each process for the cells it runs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.data import DataError, Dataset, load_dataset
from prunelab.factories import is_factory
from prunelab.loggers import Loggers
from prunelab.models import ModelConfig, build_model, evaluating, first_tensor
from prunelab.paths import RunPaths
from prunelab.prune import check_fits
from prunelab.results import renamed
from prunelab.schedules import SCHEDULES
from prunelab.storage import atomic_write_text, load_state_dict, save_state_dict
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.tasks import TASKS
from prunelab.train import evaluate, train
from prunelab.user_data import load_user_data


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose from auto, cpu, cuda")
    return torch.device(name)


# Each process keeps its dataset and base models between the cells it runs.
_BASES: dict[tuple, BaseModels] = {}


def _bases_key(config: StudyConfig, options: RunOptions) -> tuple:
    return (config.dataset, json.dumps(config.data_kwargs, sort_keys=True), config.task,
            config.val_size, config.train_limit, str(options.data_dir), options.download,
            options.device, str(options.out))  # fmt: skip


def bases_for(config: StudyConfig, options: RunOptions) -> BaseModels:
    key = _bases_key(config, options)
    if key not in _BASES:
        device = resolve_device(options.device)
        data = load_study_data(config, options, device)
        _BASES[key] = BaseModels(data, RunPaths(Path(options.out)), device, options.log)
    return _BASES[key]


def rewinds(config: StudyConfig) -> bool:
    """Whether ``config``'s schedule rewinds to an early snapshot of dense training."""
    return SCHEDULES[config.schedule.name].rewinds


def forget_bases(config: StudyConfig, options: RunOptions) -> None:
    """Drop this process's cached data and models of ``config`` (a study is done)."""
    _BASES.pop(_bases_key(config, options), None)


class BaseModels:
    """The trained dense models of a run directory, loaded (or trained) once each."""

    def __init__(
        self, data: Dataset, paths: RunPaths, device: torch.device, log: tuple[str, ...] = ()
    ):
        self.data, self.paths, self.device, self.log = data, paths, device, log
        self._loaded: dict[tuple, tuple[dict, dict | None, dict]] = {}

    def get(self, config: StudyConfig) -> tuple[dict, dict | None, dict]:
        """(state, rewind state or None, record) of ``config``'s base model."""
        key = (config.base_id(), rewinds(config), config.schedule.rewind_steps)
        if key not in self._loaded:
            log = partial(self.loggers, config, f"dense-seed{config.seed}")  # if it trains
            self._loaded[key] = _base_model(config, self.data, self.paths, self.device, log)
        return self._loaded[key]

    def loggers(self, config: StudyConfig, run: str, **params) -> Loggers:
        """The chosen loggers of one training run of ``config`` (the dense model, a cell)."""
        described = {"dataset": config.dataset, "task": config.task, "model": config.model.name,
                     "seed": config.seed, **params}  # fmt: skip
        return Loggers(self.log, self.paths.root, run, described)


def fitted(config: StudyConfig, data: Dataset) -> ModelConfig:
    """The study's model for its data's images and classes (a folder of images says what
    they are only once it is read)."""
    return config.model.for_data(data.shape, data.num_classes)


@torch.no_grad()
def check_takes(model: nn.Module, data: Dataset) -> None:
    """The model takes a batch of the dataset and gives what its task compares with the
    targets (classification: a score per class), or a ValueError says what it did
    instead (a model of your own may not)."""
    x, y = next(iter(data.train.batches(2)))
    try:
        with evaluating(model):
            out = first_tensor(model(x))
    except Exception as err:
        raise ValueError(f"the model fails on a batch of {data.name} inputs {list(x.shape)}: "
                         f"{type(err).__name__}: {err}") from err  # fmt: skip
    classes = data.num_classes if data.task.name == "classification" else None
    if classes is not None and tuple(out.shape) != (len(x), classes):
        raise ValueError(f"the model gives {list(out.shape)} for a batch of {len(x)} "
                         f"{data.name} inputs; expected [{len(x)}, {classes}], one "
                         "score per class")  # fmt: skip
    try:
        data.task.check(out, y)
    except ValueError as err:
        raise ValueError(f"the model's outputs do not fit {data.name}'s targets: {err}") from err


def load_study_data(config: StudyConfig, options: RunOptions, device: torch.device) -> Dataset:
    """The study's dataset on ``device``: a built-in one, or your own ``--data``."""
    if is_factory(config.dataset):
        data = load_user_data(config.dataset, config.data_source, config.data_kwargs,
                              TASKS[config.task], val_size=config.val_size,
                              train_limit=config.train_limit,
                              workers=options.data_workers)  # fmt: skip
        return data.to(device)
    data = load_dataset(
        config.dataset,
        data_dir=options.data_dir,
        val_size=config.val_size,
        train_limit=config.train_limit,
        download=options.download,
    )
    return replace(data, task=TASKS[config.task]).to(device)


def _base_model(
    config: StudyConfig, data: Dataset, paths: RunPaths, device: torch.device,
    open_log: Callable[[], Loggers],
) -> tuple[dict, dict | None, dict]:  # fmt: skip
    """Train the dense model once; later runs with the same settings load it.

    Returns its state, the state ``rewind_steps`` into its training (rewinding
    schedules only; None otherwise) and its record.
    """
    base_id = config.base_id()
    model = build_model(fitted(config, data), seed=config.seed).to(device)
    check_takes(model, data)
    check_fits(model, config.methods, example_inputs=data.train.head(2),
               include_last=config.prune_last, ignore=config.ignore,
               include=config.include or None)  # fmt: skip
    weights, record = paths.base_model(base_id), paths.base_record(base_id)
    rewinding = rewinds(config)
    rewind_path = paths.rewind_model(base_id, config.schedule.rewind_steps)
    need_training = not (weights.exists() and record.exists())
    if not need_training:
        dense = _stored(model, config, data, paths)
    if need_training or (rewinding and not rewind_path.exists()):
        # Training is deterministic from its seed: a rerun made only for a missing
        # rewind snapshot retraces the stored model's path.
        trainee = model
        if not need_training:
            trainee = build_model(fitted(config, data), seed=config.seed).to(device)
        snapshot = _Snapshot(config.schedule.rewind_steps, trainee)
        log = open_log()
        try:
            history = train(trainee, data.train, data.val, config.train, seed=config.seed,
                            after_step=snapshot, desc="dense", task=data.task,
                            log=log.of("dense"))  # fmt: skip
        finally:
            log.close()
        save_state_dict(snapshot.model, rewind_path)
        if need_training:
            test = evaluate(model, data.test, task=data.task)
            val = evaluate(model, data.val, task=data.task)
            dense = {
                "base_id": base_id,
                "data": data.fingerprint,
                "data_source": data.source,
                "test_metric": test.metric,
                "test_loss": test.loss,
                "val_metric": val.metric,
                "val_loss": val.loss,
                "history": [asdict(r) for r in history],
            }
            save_state_dict(model, weights)
            atomic_write_text(record, json.dumps(dense, indent=1))
            tqdm.write(f"dense model: test {data.task.metric.name} {test.metric:.4f} (saved to "
                       f"{weights})")  # fmt: skip
    state = {name: t.clone() for name, t in model.state_dict().items()}
    rewind = None
    if rewinding:
        rewound = build_model(fitted(config, data)).to(device)
        load_state_dict(rewound, rewind_path)
        rewind = rewound.state_dict()
    return state, rewind, dense


def _stored(model: nn.Module, config: StudyConfig, data: Dataset, paths: RunPaths) -> dict:
    """The stored dense model's record, its weights loaded into ``model``; a DataError
    where either cannot be read or it was trained on other data."""
    base_id = config.base_id()
    weights, record = paths.base_model(base_id), paths.base_record(base_id)
    try:
        dense = renamed(json.loads(record.read_text()))
    except Exception as err:  # a damaged file must not take a traceback with it
        raise DataError(f"cannot read {record} ({err}); delete it to retrain") from err
    if dense.get("data") not in (None, data.fingerprint):  # (older runs: not recorded)
        raise DataError(
            f"the stored dense model {weights} was trained on other {config.dataset} data "
            f"(from {dense.get('data_source')}, now {data.source}); use another --out"
        )
    try:
        load_state_dict(model, weights)
    except Exception as err:
        raise DataError(
            f"cannot load the stored dense model {weights} ({err}); delete it to retrain"
        ) from err
    return dense


class _Snapshot:
    """An ``after_step`` callback keeping a copy of the model after ``steps`` steps."""

    def __init__(self, steps: int, model: nn.Module):
        self.steps, self.taken = steps, 0
        self.model = copy.deepcopy(model)  # step 0: the initial weights

    def __call__(self, model: nn.Module) -> None:
        self.taken += 1
        if self.taken == self.steps:
            self.model.load_state_dict(model.state_dict())
