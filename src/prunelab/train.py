"""Training and evaluation. Pruning reaches the loop only through ``after_step``.

On CPU, call ``fast_cpu_math()`` once at the start of a program that trains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from prunelab.augment import random_affine
from prunelab.models import evaluating, first_tensor
from prunelab.options import check_choice
from prunelab.splits import AnySplit, as_split
from prunelab.tasks import Task, task_of

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
# Fused kernels: on CPU, Adam's step is about 8x faster fused, and the unfused step
# slows down further on the exact zeros of pruned weights (sqrt(0) takes a slow path).
FUSED = {"adam", "sgd"}
LR_SCHEDULES = ("constant", "cosine")


def fast_cpu_math() -> None:
    """Treat denormal floats as zero, for this process.

    As training converges, gradients and Adam's moment estimates drift into the
    denormal range, where CPU arithmetic is many times slower: on the seed's MLP
    epochs slow by half without this, at the same accuracy (measured by
    ``benchmarks/cpu_tricks.py``). Call it before torch first computes in parallel: threads copy
    the setting when they start, and torch starts its thread pool on first use.
    """
    torch.set_flush_denormal(True)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = field(default="adam", metadata={"help": "optimizer", "choices": OPTIMIZERS})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=128, metadata={"help": "batch size"})
    epochs: int = field(default=5, metadata={"help": "epochs"})
    lr_schedule: str = field(
        default="cosine", metadata={"help": "learning-rate schedule", "choices": LR_SCHEDULES}
    )
    augment: bool = field(
        default=False, metadata={"help": "augmentation (small random rotations, zooms and shifts)"}
    )
    momentum: float = field(default=0.0, metadata={"help": "momentum (sgd, rmsprop)"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (sgd)"})
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "L2 penalty on the weights, as the optimizer applies it (pruned "
                  "weights stay zero)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr schedule", self.lr_schedule, LR_SCHEDULES)
        if self.momentum and self.optimizer == "adam":
            raise ValueError("adam has no momentum setting (its betas); use sgd or rmsprop")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise ValueError("Nesterov momentum needs --optimizer sgd and --momentum > 0")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(f"need 0 <= momentum < 1 and weight_decay >= 0, got momentum="
                             f"{self.momentum}, weight_decay={self.weight_decay}")  # fmt: skip
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError(
                "need lr > 0, batch_size >= 1 and epochs >= 0, got "
                f"lr={self.lr}, batch_size={self.batch_size}, epochs={self.epochs}"
            )

    def optimizer_for(self, parameters) -> torch.optim.Optimizer:
        """This recipe's optimizer of ``parameters``."""
        options = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer in FUSED:
            options["fused"] = True
        if self.optimizer != "adam":
            options["momentum"] = self.momentum
        if self.optimizer == "sgd":
            options["nesterov"] = self.nesterov
        return OPTIMIZERS[self.optimizer](parameters, **options)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_metric: float  # the task's metric (classification: accuracy)
    val_loss: float
    val_metric: float
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    loss: float  # the task's loss, per what it is averaged over (samples, tokens)
    metric: float


class _Sums:
    """A task's statistics summed over batches, on the device until read."""

    def __init__(self, task: Task):
        self.task, self.totals = task, {}

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        for key, value in self.task.sums(output, target).items():
            self.totals[key] = self.totals[key] + value if key in self.totals else value

    def read(self) -> Evaluation:
        totals = {key: value.detach().double().cpu() for key, value in self.totals.items()}
        if not totals or not totals["n"]:
            raise ValueError("nothing to measure: the data gave no samples")
        return Evaluation(float(totals["loss"] / totals["n"]), self.task.metric.value(totals))


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: AnySplit, batch_size: int = 256, task: str | Task = "classification"
) -> Evaluation:
    """The task's loss and metric of ``model`` on ``split``, in batches small enough for a
    convolution's activations to stay in cache (ResNet-20: 3x faster than 2000)."""
    sums = _Sums(task_of(task))
    with evaluating(model):
        for x, y in as_split(split).batches(batch_size):
            sums.add(first_tensor(model(x)), y)
    return sums.read()


def train(
    model: nn.Module,
    train_split: AnySplit,
    val_split: AnySplit,
    config: TrainConfig,
    *,
    seed: int,
    after_step: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
    task: str | Task = "classification",
    log: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place on the task's loss; return one record per epoch. The
    splits are ``Split``s, or anything ``splits.as_split`` reads (a ``DataLoader``).

    ``after_step`` runs after every optimizer step (pruning uses it to hold masks);
    ``log`` gets each epoch's record as it ends.
    The batch order, dropout and augmentation all follow from ``seed``.
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout draws from the global generator; restored after
        loop = _Loop(model, config, task_of(task), seed, after_step)
        return loop.run(as_split(train_split), as_split(val_split), desc, log)


class _Loop:
    def __init__(self, model, config, task, seed, after_step):
        self.model, self.config, self.task, self.after_step = model, config, task, after_step
        self.order_gen = torch.Generator().manual_seed(seed)
        self.optimizer = config.optimizer_for(model.parameters())

    def run(self, train_split, val_split, desc, log) -> list[EpochRecord]:
        total_steps = steps_per_epoch(train_split, self.config.batch_size) * self.config.epochs
        scheduler = None
        if self.config.lr_schedule == "cosine" and total_steps > 0:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        records = []
        with tqdm(total=total_steps, desc=desc, disable=None, leave=False, unit="step") as bar:
            for epoch in range(1, self.config.epochs + 1):
                start_time = time.perf_counter()
                seen = self.epoch(train_split, scheduler, bar)
                if not math.isfinite(seen.loss):
                    raise FloatingPointError(
                        f"the training loss became {seen.loss} in epoch {epoch}"
                    )
                val = evaluate(self.model, val_split, task=self.task)
                records.append(EpochRecord(epoch, seen.loss, seen.metric, val.loss, val.metric,
                                           time.perf_counter() - start_time))  # fmt: skip
                bar.set_postfix({f"val_{self.task.metric.name}": f"{val.metric:.4g}"})
                if log is not None:
                    log(records[-1])
        return records

    def epoch(self, split, scheduler, bar) -> Evaluation:
        self.model.train()
        sums = _Sums(self.task)
        for x, y in split.batches(self.config.batch_size, self.order_gen):
            if self.config.augment:
                x = random_affine(x, self.order_gen)
            output = first_tensor(self.model(x))
            loss = self.task.loss(output, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if self.after_step is not None:
                self.after_step(self.model)
            with torch.no_grad():
                sums.add(output.detach(), y)
            bar.update()
        return sums.read()


def steps_per_epoch(split: AnySplit, batch_size: int) -> int:
    """Optimizer steps per epoch: the loader's own count where it batches itself."""
    source = getattr(split, "source", None)
    if source is not None and not isinstance(source, TorchDataset):
        try:
            return len(source)
        except TypeError:  # a loader of an iterable dataset: its samples over its batch
            batch_size = getattr(source, "batch_size", None) or batch_size
    return math.ceil(len(split) / (getattr(split, "batch_size", None) or batch_size))
