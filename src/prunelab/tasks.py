"""What a model is trained to do: the loss it minimises and the metric its budget is
measured in, one entry of ``TASKS`` per kind.

A task also gives what the loss-based criteria need of it: the gradient of each
sample's loss with respect to that sample's outputs (the empirical Fisher's), and
factors of the loss's Hessian with respect to the outputs (the Gauss-Newton
matrix's, for OBD). A metric is computed from statistics summed over batches, so
evaluation streams, and it says whether higher is better: the budget's tolerance
follows its direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunelab.options import check_choice

Tensor = torch.Tensor
IGNORE = -100  # a language model's target token that counts for nothing (padding)


class TaskError(ValueError):
    """A model's outputs and a dataset's targets that the task cannot compare."""


@dataclass(frozen=True)
class Metric:
    """How good a model is, from sums over batches (``Task.sums``)."""

    name: str
    value: Callable[[dict[str, Tensor]], float]
    higher_is_better: bool = True
    percent: bool = False  # shown, and tolerated, in points (0.01)
    # the tolerance of answers and budgets where none is given: in the metric's units,
    # or, where None, 1% of the dense model's value (a metric whose scale is the data's)
    default_tolerance: float | None = None

    def tolerance_for(self, dense: float, given: float | None = None) -> float:
        """``given``, checked, or the default tolerance around a dense model's value."""
        if given is None:
            given = self.default_tolerance
        if given is None:
            given = float(f"{0.01 * abs(dense):.2g}")
        self.check_tolerance(given)
        return given

    @property
    def default_words(self) -> str:
        """The default tolerance, in words."""
        if self.default_tolerance is None:
            return "1%"
        return self.tolerance(self.default_tolerance)

    def within(self, value: float, dense: float, tolerance: float) -> bool:
        """Whether ``value`` is worse than ``dense`` by at most ``tolerance`` (points for
        a percentage), in whichever direction is worse."""
        allowed = tolerance / 100 if self.percent else tolerance
        return value >= dense - allowed if self.higher_is_better else value <= dense + allowed

    def show(self, value: float) -> str:
        """A value in words: "97.12%" for a percentage, "12.34" otherwise."""
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4g}"

    def tolerance(self, amount: float) -> str:
        """A tolerance in words: "1 point", "0.5 points", "0.05"."""
        if not self.percent:
            return f"{amount:g}"
        return f"{amount:g} point" + ("" if amount == 1 else "s")

    def check_tolerance(self, amount: float) -> None:
        top = 50 if self.percent else float("inf")
        if not 0 <= amount < top:
            unit = f"{self.name} points" if self.percent else f"units of {self.name}"
            bound = "from 0 to under 50" if self.percent else "at least 0"
            raise ValueError(f"`max_drop` is a tolerance in {unit}, {bound}; got {amount:g}")


@dataclass(frozen=True)
class Task:
    """A loss (mean over a batch) and a metric, with what criteria need of the loss.

    ``sums`` gives additive statistics of a batch as tensors: ``loss`` (summed),
    ``n`` (what it was summed over) and whatever the metric reads.
    ``sample_gradients`` and ``curvature`` give tensors shaped like the
    outputs: the gradient of each sample's loss, and columns of L with L L^T the
    Hessian of each sample's loss, both with respect to that sample's outputs (a
    sample's loss is its mean over its outputs or predicted tokens).
    """

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    sums: Callable[[Tensor, Tensor], dict[str, Tensor]]
    metric: Metric
    check: Callable[[Tensor, Tensor], None]
    sample_gradients: Callable[[Tensor, Tensor], Iterable[Tensor]] | None = None
    curvature: Callable[[Tensor, Tensor], Iterable[Tensor]] | None = None
    describe: str = ""


# --- classification: logits [N, C], class indices [N] ---------------------------------


def _check_classes(output: Tensor, target: Tensor) -> None:
    if output.dim() != 2 or target.shape != output.shape[:1]:
        raise TaskError(f"classification needs outputs [N, classes] and labels [N], got "
                        f"{list(output.shape)} and {list(target.shape)}")  # fmt: skip
    if target.is_floating_point():
        raise TaskError(f"classification needs integer labels, got {target.dtype} (for "
                        "numbers to predict use --task regression)")  # fmt: skip
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= output.shape[1]):
        raise TaskError(f"labels go from {int(target.min())} to {int(target.max())}, but the "
                        f"model gives {output.shape[1]} scores per sample")  # fmt: skip


def _class_sums(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    return {
        "loss": F.cross_entropy(output, target, reduction="sum"),
        "n": torch.tensor(len(target), device=output.device),
        "correct": (output.argmax(1) == target).sum(),
    }


def _softmax_factors(logits: Tensor, target: Tensor) -> Iterator[Tensor]:
    """Columns of L with L L^T = diag(p) - p p^T over the last axis: sqrt(p_c) (e_c - p),
    one at a time (a vocabulary's would not fit at once)."""
    p = logits.softmax(-1)
    for c in range(p.shape[-1]):
        e_c = torch.zeros_like(p)
        e_c[..., c] = 1.0
        yield p[..., c : c + 1].sqrt() * (e_c - p)


def _softmax_gradient(logits: Tensor, target: Tensor) -> list[Tensor]:
    """d(loss_n)/d(logits_n) = p_n - e_(y_n)."""
    return [logits.softmax(-1) - F.one_hot(target, logits.shape[-1]).to(logits.dtype)]


# --- regression: outputs and targets of the same numbers, [N] or [N, D] --------------


def _as_target(output: Tensor, target: Tensor) -> Tensor:
    """The outputs shaped as the targets ([N, 1] outputs for [N] targets)."""
    return output.reshape(target.shape) if output.numel() == target.numel() else output


def _check_regression(output: Tensor, target: Tensor) -> None:
    if not target.is_floating_point():
        raise TaskError(f"regression needs float targets, got {target.dtype} (for classes use "
                        "--task classification)")  # fmt: skip
    if output.numel() != target.numel() or output.shape[0] != target.shape[0]:
        raise TaskError(f"regression needs one output per target: outputs "
                        f"{list(output.shape)}, targets {list(target.shape)}")  # fmt: skip


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(_as_target(output, target), target)


def _regression_sums(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    """The squared error in all, and per output column: its error, targets and squares."""
    columns = target.double().reshape(len(target), -1)
    error = _as_target(output, target).double().reshape(columns.shape) - columns
    return {"loss": (error**2).sum(), "n": torch.tensor(target.numel(), device=output.device),
            "rows": torch.tensor(len(target), device=output.device),
            "sse": (error**2).sum(0), "target": columns.sum(0),
            "target_sq": (columns**2).sum(0)}  # fmt: skip


def _r2(s: dict[str, Tensor]) -> float:
    """1 - SSE / SST of each output column, averaged over the columns (scikit-learn's
    uniform average): 1 is perfect, 0 each column's own mean."""
    spread = s["target_sq"] - s["target"] ** 2 / s["rows"]
    if not bool((spread > 0).all()):
        return math.nan
    return float((1 - s["sse"] / spread).mean())


def _per_output(output: Tensor) -> float:
    return output[0].numel() if output.dim() > 1 else 1


def _mse_gradient(output: Tensor, target: Tensor) -> list[Tensor]:
    """Sample n's loss is its mean squared error over its D outputs: gradient 2 e / D."""
    return [2 * (output - target.reshape(output.shape)) / _per_output(output)]


def _mse_factors(output: Tensor, target: Tensor) -> Iterator[Tensor]:
    """The Hessian 2 I / D, as D columns sqrt(2 / D) e_d."""
    d = _per_output(output)
    flat = torch.zeros(output.shape[0], d, dtype=output.dtype, device=output.device)
    for i in range(d):
        column = flat.clone()
        column[:, i] = math.sqrt(2 / d)
        yield column.view_as(output)


# --- language modelling: logits [N, T, V], tokens [N, T]; position t predicts t + 1 --


def _check_tokens(output: Tensor, target: Tensor) -> None:
    if output.dim() != 3 or target.shape != output.shape[:2] or target.is_floating_point():
        raise TaskError(f"a language model needs logits [N, T, vocabulary] and integer tokens "
                        f"[N, T]; got {list(output.shape)} and {target.dtype} "
                        f"{list(target.shape)}")  # fmt: skip
    known = target[target != IGNORE]
    if len(known) and (int(known.min()) < 0 or int(known.max()) >= output.shape[-1]):
        raise TaskError(f"tokens go up to {int(known.max())}, the vocabulary has "
                        f"{output.shape[-1]}")  # fmt: skip


def _next(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Logits at positions 0..T-2 and the tokens they predict, 1..T-1, flattened."""
    return output[:, :-1].flatten(0, 1), target[:, 1:].flatten()


def _next_token_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(*_next(output, target), ignore_index=IGNORE)


def _token_sums(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    logits, tokens = _next(output, target)
    return {"loss": F.cross_entropy(logits, tokens, ignore_index=IGNORE, reduction="sum"),
            "n": (tokens != IGNORE).sum()}  # fmt: skip


def _perplexity(s: dict[str, Tensor]) -> float:
    return math.exp(float(s["loss"] / s["n"])) if s["n"] else math.nan


def _predicting(output: Tensor, target: Tensor) -> Tensor:
    """Which positions predict a token: [N, T, 1], weighted so that each sample's loss
    is the mean over its predictions."""
    counted = torch.zeros(target.shape, dtype=output.dtype, device=output.device)
    counted[:, :-1] = (target[:, 1:] != IGNORE).to(output.dtype)
    return (counted / counted.sum(1, keepdim=True).clamp_min(1)).unsqueeze(-1)


def _token_gradient(output: Tensor, target: Tensor) -> list[Tensor]:
    weight = _predicting(output, target)
    nxt = target.roll(-1, 1).clamp_min(0)
    return [weight * _softmax_gradient(output, nxt)[0]]


def _token_factors(output: Tensor, target: Tensor) -> Iterator[Tensor]:
    """The Hessian of a sample's loss is block-diagonal, one softmax block per position:
    exact factors would take T x V backward passes. Each position's factors are given a
    random sign instead, so cross-position terms vanish in expectation and V passes give
    an unbiased estimate, noisy for one batch, averaging out over many. The signs are
    seeded by the batch's tokens (reproducible)."""
    generator = torch.Generator().manual_seed(int(target.sum()) * 31 + target.numel())
    signs = torch.randint(0, 2, (*target.shape, 1), generator=generator) * 2 - 1
    weight = _predicting(output, target).sqrt() * signs.to(output)
    return (weight * f for f in _softmax_factors(output, target))


TASKS: dict[str, Task] = {
    "classification": Task(
        "classification", F.cross_entropy, _class_sums,
        Metric("accuracy", lambda s: float(s["correct"] / s["n"]), percent=True,
               default_tolerance=1.0),
        _check_classes, _softmax_gradient, _softmax_factors,
        describe="class scores [N, C] against labels [N]; loss: cross entropy; metric: accuracy",
    ),
    "regression": Task(
        "regression", _mse, _regression_sums, Metric("r2", _r2, default_tolerance=0.01),
        _check_regression,
        _mse_gradient, _mse_factors,
        describe="outputs against float targets of the same size; loss: mean squared error; "
        "metric: R²",
    ),
    "regression-mse": Task(
        "regression-mse", _mse, _regression_sums,
        Metric("negative_mse", lambda s: float(-s["loss"] / s["n"])), _check_regression,
        _mse_gradient, _mse_factors,
        describe="as regression, with the negative mean squared error as its metric",
    ),
    "lm": Task(
        "lm", _next_token_loss, _token_sums,
        Metric("perplexity", _perplexity, higher_is_better=False), _check_tokens,
        _token_gradient, _token_factors,
        describe="a language model's logits [N, T, V] against its tokens [N, T], each "
        "position predicting the next; loss: cross entropy; metric: perplexity (lower is "
        "better)",
    ),
}  # fmt: skip


def custom_task(
    loss: Callable[[Tensor, Tensor], Tensor],
    metric: Callable[[Tensor, Tensor], Tensor | float],
    *,
    name: str = "metric",
    higher_is_better: bool = True,
) -> Task:
    """A task of two callables: ``loss(outputs, targets)``, the batch's mean loss, and
    ``metric(outputs, targets)``, the batch's mean metric (averaged over batches by
    their sizes). A sample's loss gradient comes from autograd; there is no
    Gauss-Newton factor, so obd refuses it (fisher, taylor and the rest take it).
    The metric is registered in ``METRICS`` under ``name``, for answers to show."""

    def sums(output: Tensor, target: Tensor) -> dict[str, Tensor]:
        n = len(output)
        value = torch.as_tensor(metric(output, target), dtype=torch.float64)
        return {"loss": loss(output, target).double() * n, "metric": value * n,
                "n": torch.tensor(n, device=output.device)}  # fmt: skip

    def check(output: Tensor, target: Tensor) -> None:
        try:
            value = loss(output, target)
        except Exception as err:
            raise TaskError(f"the loss fails on the model's outputs {list(output.shape)} and "
                            f"the targets {list(target.shape)}: {err}") from err  # fmt: skip
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TaskError("the loss must return one number, the batch's mean")

    def sample_gradients(output: Tensor, target: Tensor) -> list[Tensor]:
        """Of each sample's loss: the gradient of the batch's summed loss."""
        with torch.enable_grad():
            output = output.detach().requires_grad_()
            (gradient,) = torch.autograd.grad(loss(output, target) * len(output), output)
        return [gradient]

    if name in BUILT_IN:
        raise ValueError(f"{name!r} names a built-in metric; give your metric another name")
    measured = Metric(name, lambda s: float(s["metric"] / s["n"]), higher_is_better)
    METRICS[name] = measured
    return Task("custom", loss, sums, measured, check, sample_gradients,
                describe="your loss and metric")  # fmt: skip


def task_of(task: str | Task | tuple) -> Task:
    """A task by name, the task itself, or one of two callables (loss, metric)."""
    if isinstance(task, Task):
        return task
    if isinstance(task, tuple) and len(task) == 2 and all(map(callable, task)):
        return custom_task(*task)
    check_choice("task", task, TASKS)
    return TASKS[task]


METRICS: dict[str, Metric] = {task.metric.name: task.metric for task in TASKS.values()}
BUILT_IN = frozenset(METRICS)
