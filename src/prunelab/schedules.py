"""Schedules: how a trained network is brought to sparsity k.

- ``oneshot``: prune once, then fine-tune with the masks held.
- ``iterative``: ``rounds`` rounds of prune-then-fine-tune; the kept fraction
  shrinks by the same factor every round (geometric steps, Han et al. 2015).
- ``gradual``: prune while training, along Zhu and Gupta's (2017) cubic
  s_t = k (1 - (1 - t / T)^3) over the first ``ramp`` of the steps, updating
  the masks every ``every`` steps, then train on at sparsity k.
- ``lottery``: iterative pruning in which the surviving weights are rewound,
  every round, to their values ``rewind_steps`` into the dense model's training,
  and trained again with the dense recipe (Frankle and Carbin 2019; Frankle et
  al. 2019). Its control retrains the final mask from a fresh random
  initialisation.

Already-pruned entries stay pruned from round to round (``prune(..., pruned=)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from prunelab.compact import CompactionError, compact_with_indices, expand_
from prunelab.data import Dataset
from prunelab.options import check_choice
from prunelab.prune import Masks, PruneMethod, prune
from prunelab.train import EpochRecord, TrainConfig, steps_per_epoch, train


@dataclass(frozen=True)
class Schedule:
    name: str = field(
        default="oneshot",
        metadata={
            "help": lambda: "how k is reached: " + describe_schedules(),
            "flag": "schedule",
            "choices": lambda: SCHEDULES,
            "what": "schedule",
        },
    )
    rounds: int = field(
        default=5, metadata={"help": "rounds of the iterative and lottery schedules"}
    )
    ramp: float = field(
        default=0.6,
        metadata={"help": "gradual: fraction of the steps over which sparsity rises to k"},
    )
    every: int = field(
        default=50,
        metadata={"help": "gradual: optimizer steps between mask updates", "flag": "prune-every"},
    )
    rewind_steps: int = field(
        default=100, metadata={"help": "lottery: the step of dense training rewound to"}
    )

    def __post_init__(self) -> None:
        check_choice("schedule", self.name, SCHEDULES)
        if self.rounds < 1 or self.every < 1 or self.rewind_steps < 0:
            raise ValueError("rounds and every must be positive, rewind_steps not negative")
        if not 0 < self.ramp <= 1:
            raise ValueError(f"ramp must be in (0, 1], got {self.ramp}")


@dataclass(frozen=True)
class Job:
    """One network to bring to sparsity k."""

    method: PruneMethod
    k: float
    data: Dataset
    finetune: TrainConfig
    batches: list | None  # calibration data for the criteria that need it
    include_last: bool
    seed: int
    ignore: tuple[str, ...] = ()  # fnmatch patterns of layers left alone
    include: tuple[str, ...] = ()  # patterns of the only layers pruned (none: every layer)
    log: Callable[[EpochRecord], None] | None = None  # gets each training epoch as it ends


@dataclass(frozen=True)
class DenseRun:
    """What rewinding schedules need of the dense model's training."""

    rewind_state: dict  # the weights ``rewind_steps`` into training
    train: TrainConfig  # the dense recipe, to retrain with
    fresh: Callable[[int], nn.Module]  # a new random initialisation from a seed: the control


@dataclass
class Outcome:
    history: list[EpochRecord]
    masks: Masks
    control: nn.Module | None = None  # lottery: the final mask retrained from a fresh init


def round_targets(k: float, rounds: int) -> list[float]:
    """Sparsity after each round: the kept fraction (1 - k) ** (r / rounds)."""
    return [1 - (1 - k) ** (r / rounds) for r in range(1, rounds + 1)]


def cubic_sparsity(step: int, k: float, end: int) -> float:
    """Zhu and Gupta's schedule from 0 at step 0 to k at step ``end``."""
    return k * (1 - (1 - min(step, end) / end) ** 3)


def prune_job(model: nn.Module, job: Job, k: float, pruned: Masks | None = None) -> Masks:
    """Prune ``model`` in place for ``job`` at fraction ``k`` (after ``pruned``)."""
    return prune(
        model, job.method, k, batches=job.batches, include_last=job.include_last,
        seed=job.seed, pruned=pruned, example_inputs=job.data.train.head(2), ignore=job.ignore,
        include=job.include or None, task=job.data.task,
    )  # fmt: skip


def finetune(
    model: nn.Module, masks: Masks, job: Job, config: TrainConfig, seed: int
) -> list[EpochRecord]:
    """Train with the masks held. A unit-pruned chain is trained compacted: its removed
    units carry no signal and get no gradient, so the smaller network trains exactly as
    the masked one does, at a fraction of the cost; its weights are then written back
    into the full-size model."""
    desc = f"fine-tune {job.method.name}"
    if job.method.structure == "unit":
        try:
            small, kept = compact_with_indices(model)
        except CompactionError:
            pass  # not a plain chain of layers: hold the masks instead
        else:
            history = train(small, job.data.train, job.data.val, config, seed=seed, desc=desc,
                            task=job.data.task, log=job.log)  # fmt: skip
            expand_(model, small, kept)
            return history
    return train(model, job.data.train, job.data.val, config, seed=seed, desc=desc,
                 after_step=masks.holder(model), task=job.data.task, log=job.log)  # fmt: skip


def _renumber(histories: list[list[EpochRecord]]) -> list[EpochRecord]:
    records = [r for history in histories for r in history]
    return [
        EpochRecord(i + 1, r.train_loss, r.train_metric, r.val_loss, r.val_metric, r.seconds)
        for i, r in enumerate(records)
    ]


def oneshot(model: nn.Module, job: Job, schedule: Schedule, dense: DenseRun | None) -> Outcome:
    masks = prune_job(model, job, job.k)
    return Outcome(finetune(model, masks, job, job.finetune, job.seed), masks)


def iterative(model: nn.Module, job: Job, schedule: Schedule, dense: DenseRun | None) -> Outcome:
    masks, histories = None, []
    for r, target in enumerate(round_targets(job.k, schedule.rounds)):
        masks = prune_job(model, job, target, masks)
        histories.append(finetune(model, masks, job, job.finetune, job.seed + r))
    return Outcome(_renumber(histories), masks)


class GradualPruner:
    """An ``after_step`` callback: raises sparsity along the cubic schedule every
    ``every`` steps until step ``end``, and holds the masks after every step."""

    def __init__(self, job: Job, end: int, every: int):
        self.job, self.end, self.every = job, max(1, end), every
        self.step, self.masks, self.hold = 0, None, None

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        if self.step <= self.end and (self.step % self.every == 0 or self.step == self.end):
            target = cubic_sparsity(self.step, self.job.k, self.end)
            self.masks = prune_job(model, self.job, target, self.masks)
            self.hold = self.masks.holder(model)
        elif self.hold is not None:
            self.hold(model)


def gradual(model: nn.Module, job: Job, schedule: Schedule, dense: DenseRun | None) -> Outcome:
    config = job.finetune
    steps = steps_per_epoch(job.data.train, config.batch_size) * config.epochs
    pruner = GradualPruner(job, round(schedule.ramp * steps), schedule.every)
    history = train(model, job.data.train, job.data.val, config, seed=job.seed,
                    after_step=pruner, desc=f"gradual {job.method.name}",
                    task=job.data.task, log=job.log)  # fmt: skip
    if pruner.masks is None or pruner.step < pruner.end:  # too few steps to finish the ramp
        pruner.masks = prune_job(model, job, job.k, pruner.masks)
    return Outcome(history, pruner.masks)


def lottery(model: nn.Module, job: Job, schedule: Schedule, dense: DenseRun) -> Outcome:
    """``model`` holds the trained dense weights; ``dense.rewind_state`` the early ones."""
    masks, histories = None, []
    for r, target in enumerate(round_targets(job.k, schedule.rounds)):
        masks = prune_job(model, job, target, masks)
        model.load_state_dict(dense.rewind_state)
        masks.apply_(model)
        histories.append(finetune(model, masks, job, dense.train, job.seed + r))
    control = dense.fresh(job.seed + 10_000)
    control.to(next(model.parameters()).device)
    masks.apply_(control)
    finetune(control, masks, job, dense.train, job.seed + schedule.rounds)
    return Outcome(_renumber(histories), masks, control)


@dataclass(frozen=True)
class ScheduleKind:
    """A registered schedule: one entry of ``SCHEDULES``, all that names it elsewhere.

    ``run(model, job, schedule, dense)`` brings the trained model to ``job.k``;
    ``rewinds``: it needs the dense model's training (``DenseRun``); ``describe`` is
    the report's sentence, formatted with the ``Schedule``'s fields.
    """

    run: Callable[[nn.Module, Job, Schedule, DenseRun | None], Outcome]
    describe: str
    rewinds: bool = False


SCHEDULES: dict[str, ScheduleKind] = {
    "oneshot": ScheduleKind(oneshot, "one-shot: pruned once at k, then fine-tuned"),
    "iterative": ScheduleKind(iterative, "iterative: {rounds} rounds of pruning and "
                              "fine-tuning, the kept fraction shrinking by the same factor "
                              "each round"),
    "gradual": ScheduleKind(gradual, "gradual: pruned during fine-tuning along Zhu and "
                            "Gupta's cubic schedule over the first {ramp:.0%} of the steps, "
                            "masks updated every {every} steps"),
    "lottery": ScheduleKind(lottery, "lottery ticket: {rounds} rounds of pruning, each "
                            "rewinding the survivors to their values {rewind_steps} steps "
                            "into dense training and retraining them with the dense recipe; "
                            "control: the final mask from a fresh random initialisation",
                            rewinds=True),
}  # fmt: skip


def describe_schedule(schedule: Schedule) -> str:
    """The registered description, with this schedule's settings filled in."""
    return SCHEDULES[schedule.name].describe.format(**asdict(schedule))


def describe_schedules() -> str:
    """Every schedule, with the default settings, for help."""
    return "; ".join(describe_schedule(Schedule(name)) for name in SCHEDULES)


def run_schedule(
    schedule: Schedule, model: nn.Module, job: Job, dense: DenseRun | None = None
) -> Outcome:
    """Bring ``model`` (trained, dense) to sparsity ``job.k`` in place."""
    kind = SCHEDULES[schedule.name]
    if kind.rewinds and dense is None:
        raise ValueError(f"the {schedule.name} schedule needs the dense model's training run")
    return kind.run(model, job, schedule, dense)
