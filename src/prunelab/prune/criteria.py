"""Pruning criteria: functions that score weights or units and never edit the model,
registered in ``CRITERIA`` beside obs, obc and obc-rounds, which re-fit what they keep
(``obs.py``).

A criterion takes a ``ScoreContext`` and returns one score tensor per prunable
layer: the weight's shape for the "weight" structure, one score per output unit
for "unit". Lower scores are removed first. Scores of criteria that estimate a
loss increase (obd, fisher, taylor) and of lamp are comparable across layers;
raw magnitudes are not, which is why global magnitude pruning tends to empty the
small late layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models import evaluating, first_tensor
from prunelab.prune import group_criteria as on_groups
from prunelab.prune.curvature import (
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    input_norms,
)
from prunelab.prune.group_criteria import GroupContext, GroupScores, lamp_normalize
from prunelab.prune.obc import ONE_AT_A_TIME
from prunelab.tasks import TASKS, Task

Scores = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ScoreContext:
    model: nn.Module
    layers: dict[str, nn.Module]
    structure: str  # "weight" or "unit"
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # calibration data
    seed: int = 0
    task: Task = TASKS["classification"]  # whose loss obd, fisher and taylor read


class NeedsCalibrationError(ValueError):
    """A criterion that looks at data was given none."""


def _require_batches(ctx: ScoreContext, criterion: str) -> list:
    if not ctx.batches:
        raise NeedsCalibrationError(
            f"criterion {criterion!r} needs calibration batches (inputs and labels); none given"
        )
    return ctx.batches


def _score_shape(layer: nn.Module, structure: str) -> torch.Size:
    return layer.weight.shape if structure == "weight" else layer.weight.shape[:1]


def _per_unit(weight_scores: Scores, bias_scores: Scores) -> Scores:
    """Sum per-weight scores over each unit's incoming weights (and its bias)."""
    scores = {}
    for name, score in weight_scores.items():
        unit = score.flatten(1).sum(1)
        if name in bias_scores:
            unit = unit + bias_scores[name]
        scores[name] = unit
    return scores


@torch.no_grad()
def magnitude(ctx: ScoreContext) -> Scores:
    """|w| per weight; the L2 norm of a unit's incoming weights per unit."""
    if ctx.structure == "weight":
        return {name: layer.weight.abs() for name, layer in ctx.layers.items()}
    return {name: layer.weight.flatten(1).norm(dim=1) for name, layer in ctx.layers.items()}


def random(ctx: ScoreContext) -> Scores:
    """Uniform random scores from ``ctx.seed``: the baseline any criterion must beat."""
    generator = torch.Generator().manual_seed(ctx.seed)
    scores = {}
    for name, layer in ctx.layers.items():
        shape = _score_shape(layer, ctx.structure)
        scores[name] = torch.rand(shape, generator=generator).to(layer.weight.device)
    return scores


@torch.no_grad()
def lamp(ctx: ScoreContext) -> Scores:
    """Layer-adaptive magnitude (Lee et al., 2021): w_u^2 / sum of w_v^2 over v with |w_v| >= |w_u|.

    Within a layer it ranks like magnitude; its scale makes layers comparable, so it
    is the magnitude criterion meant for global allocation. Units use squared row norms.
    """
    return {name: lamp_normalize(s**2) for name, s in magnitude(ctx).items()}


def _second_order(ctx: ScoreContext, curvature) -> Scores:
    h = curvature(ctx.model, ctx.layers, ctx.batches, ctx.task)
    with torch.no_grad():
        weight = {n: 0.5 * h[n]["weight"] * layer.weight**2 for n, layer in ctx.layers.items()}
        if ctx.structure == "weight":
            return weight
        bias = {
            n: 0.5 * h[n]["bias"] * layer.bias**2
            for n, layer in ctx.layers.items()
            if layer.bias is not None
        }
        return _per_unit(weight, bias)


def obd(ctx: ScoreContext) -> Scores:
    """Optimal Brain Damage (LeCun, Denker and Solla, 1990): s = h w^2 / 2.

    h is the diagonal of the Gauss-Newton matrix of the task's loss, exact for
    the network's linearisation, estimated on the calibration batches. A unit's
    saliency is the sum over its weights and bias (the diagonal approximation of
    removing them together).
    """
    _require_batches(ctx, "obd")
    return _second_order(ctx, gauss_newton_diagonal)


def fisher(ctx: ScoreContext) -> Scores:
    """OBD's saliency with the empirical Fisher (squared per-sample gradients at the
    true labels) in place of the Gauss-Newton diagonal: cheaper, and on a trained
    network it ranks weights worse, because those gradients vanish on examples the
    network already fits."""
    _require_batches(ctx, "fisher")
    return _second_order(ctx, empirical_fisher_diagonal)


def taylor(ctx: ScoreContext) -> Scores:
    """First-order Taylor (Molchanov et al., 2017/2019): |w * dL/dw| per batch, summed
    over the calibration batches; a unit scores |sum of w * dL/dw| over its weights and bias."""
    batches = _require_batches(ctx, "taylor")
    model = ctx.model
    scores = {
        name: torch.zeros(_score_shape(layer, ctx.structure), device=layer.weight.device)
        for name, layer in ctx.layers.items()
    }
    params = [
        p for layer in ctx.layers.values() for p in (layer.weight, layer.bias) if p is not None
    ]
    with evaluating(model):
        for x, y in batches:
            with torch.enable_grad():
                loss = ctx.task.loss(first_tensor(model(x)), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            grad_of = dict(zip(map(id, params), grads, strict=True))
            with torch.no_grad():
                for name, layer in ctx.layers.items():
                    contrib = layer.weight * grad_of[id(layer.weight)]
                    if ctx.structure == "weight":
                        scores[name] += contrib.abs()
                        continue
                    unit = contrib.flatten(1).sum(1)
                    if layer.bias is not None:
                        unit = unit + layer.bias * grad_of[id(layer.bias)]
                    scores[name] += unit.abs()
    return scores


def wanda(ctx: ScoreContext) -> Scores:
    """Wanda (Sun et al., 2023): |w_ij| * ||x_j||, a weight's magnitude times the norm of
    the input it multiplies over the calibration data (OBS's saliency with a diagonal
    input Hessian and no update). A unit scores the L2 norm of its weights' scores."""
    norms = input_norms(ctx.model, ctx.layers, _require_batches(ctx, "wanda"))
    scores = {}
    with torch.no_grad():
        for name, layer in ctx.layers.items():
            weight = layer.weight.abs().flatten(1) * norms[name]
            scores[name] = weight.view_as(layer.weight) if ctx.structure == "weight" \
                else weight.norm(dim=1)  # fmt: skip
    return scores


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: one entry of ``CRITERIA``, all that names it elsewhere.

    ``score`` ranks (lower goes first); a criterion that re-fits the kept weights
    layer by layer (``prunelab.prune.obs``) has none and says how many greedy
    ``solver_rounds`` it takes (``ONE_AT_A_TIME``: one removal per round, exactly).
    ``describe`` completes the report's "chosen ...". ``revision`` counts changes of
    the algorithm behind a name, so that stored results of an older one are not reused.
    """

    score: Callable[[ScoreContext], Scores] | None
    describe: str
    needs_data: bool = False  # calibration batches
    reads_loss: bool = False  # the task's loss, not only the inputs
    solver_rounds: int | None = None
    on_groups: Callable[[GroupContext], GroupScores] | None = None  # units of any model
    revision: int = 0

    def __call__(self, ctx: ScoreContext) -> Scores:
        return self.score(ctx)


CRITERIA: dict[str, Criterion] = {
    "magnitude": Criterion(magnitude, "by magnitude: the smallest |w| (for units, the "
                           "smallest L2 norm of their incoming weights)",
                           on_groups=on_groups.group_magnitude),
    "random": Criterion(random, "at random (a control)", on_groups=on_groups.group_random),
    "lamp": Criterion(lamp, "by layer-adaptive magnitude score (LAMP, Lee et al. 2021)",
                      on_groups=on_groups.group_lamp),
    "obd": Criterion(obd, "by Optimal Brain Damage saliency ½·h·w², h the diagonal of the "
                     "loss's Gauss-Newton Hessian (LeCun et al. 1990)", needs_data=True,
                     reads_loss=True, on_groups=on_groups.group_obd),
    "fisher": Criterion(fisher, "by ½·F·w², F the diagonal empirical Fisher information",
                        needs_data=True, reads_loss=True, on_groups=on_groups.group_fisher),
    "taylor": Criterion(taylor, "by first-order Taylor saliency |g·w| (Molchanov et al. "
                        "2017)", needs_data=True, reads_loss=True,
                        on_groups=on_groups.group_taylor),
    "wanda": Criterion(wanda, "by Wanda |w|·‖x‖, the weight's magnitude times the norm of "
                       "its input over the calibration data (Sun et al. 2023)", needs_data=True),
    "obs": Criterion(None, "by Optimal Brain Surgeon, layer by layer: each removal also "
                     "updates the remaining weights to preserve the layer's outputs "
                     "(Hassibi and Stork 1993)", needs_data=True, solver_rounds=1),
    "obc": Criterion(None, "by Optimal Brain Compression: exact greedy OBS, one weight (or "
                     "unit) at a time, each removal correcting the kept weights and the "
                     "inverse Hessian before the next choice (Frantar and Alistarh 2022)",
                     needs_data=True, solver_rounds=ONE_AT_A_TIME, revision=1),
    "obc-rounds": Criterion(None, "by greedy OBS in 4 rounds, each re-solving the kept "
                            "weights and re-scoring (a faster approximation of obc)",
                            needs_data=True, solver_rounds=4),
}  # fmt: skip
