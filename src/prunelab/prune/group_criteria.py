"""Criteria on coupled groups: one score per unit of each group, from every entry the
unit reaches (its layer's rows, the normalization entries, the consumers' columns).

A unit's score sums its entries' scores over all of its group's slices, as the
per-layer criteria sum over one row: magnitude is the L2 norm of all of them,
Taylor |sum of w * dL/dw|, OBD and Fisher the sum of h w^2 / 2 (the diagonal
approximation of removing them together), with h for every parameter
(``parameter_diagonal``). Running statistics are not weights and score nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models import evaluating, first_tensor
from prunelab.prune.curvature import parameter_diagonal
from prunelab.prune.groups import Group, per_index
from prunelab.tasks import TASKS, Task

GroupScores = dict[str, torch.Tensor]  # group name -> one score per unit


@dataclass(frozen=True)
class GroupContext:
    model: nn.Module
    groups: list[Group]
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    seed: int = 0
    task: Task = TASKS["classification"]


def unit_sums(groups: list[Group], values: dict[str, torch.Tensor]) -> GroupScores:
    """Per group, the sum of ``values`` (state-dict name -> tensor) over each unit's
    entries, each entry once: one a unit reaches along two dimensions (a convolution
    whose inputs and outputs are the same residual channels) is not counted twice."""
    sums = {}
    for group in groups:
        total = torch.zeros(group.size, dtype=torch.float64)
        by_tensor: dict[str, list] = {}
        for s in group.slices:
            if s.tensor in values:
                by_tensor.setdefault(s.tensor, []).append(s)
        for tensor, slices in by_tensor.items():
            if len(slices) > 2:
                raise ValueError(f"{tensor} is reached along more than two dimensions")
            value = values[tensor].detach().double().cpu()
            for s in slices:
                inside = s.unit >= 0
                total.index_add_(0, s.unit[inside], per_index(value, s.dim).sum(1)[inside])
            if len(slices) == 2:
                first, second = slices
                both = value.movedim((first.dim, second.dim), (0, 1)).flatten(2).sum(2)
                same = (first.unit[:, None] == second.unit[None, :]) & (first.unit[:, None] >= 0)
                rows, cols = same.nonzero(as_tuple=True)
                total.index_add_(0, first.unit[rows], -both[rows, cols])
        sums[group.name] = total
    return sums


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


@torch.no_grad()
def group_magnitude(ctx: GroupContext) -> GroupScores:
    squares = {n: p**2 for n, p in _params(ctx.model).items()}
    return {n: s.sqrt() for n, s in unit_sums(ctx.groups, squares).items()}


def group_random(ctx: GroupContext) -> GroupScores:
    generator = torch.Generator().manual_seed(ctx.seed)
    return {g.name: torch.rand(g.size, generator=generator) for g in ctx.groups}


def lamp_normalize(squared: torch.Tensor) -> torch.Tensor:
    """LAMP's scores of squared magnitudes: each over the sum of it and every larger one."""
    flat = squared.flatten()
    order = torch.argsort(flat, stable=True)
    sorted_sq = flat[order]
    # sum over this entry and every larger one: reversed cumulative sum, read at the
    # first of equal values so that ties share one denominator
    tail = sorted_sq.flip(0).cumsum(0).flip(0)
    first_equal = torch.searchsorted(sorted_sq, sorted_sq, side="left")
    score = torch.empty_like(flat)
    score[order] = sorted_sq / tail[first_equal].clamp_min(torch.finfo(flat.dtype).tiny)
    return score.view_as(squared)


def group_lamp(ctx: GroupContext) -> GroupScores:
    return {n: lamp_normalize(s**2) for n, s in group_magnitude(ctx).items()}


def _second_order(ctx: GroupContext, kind: str) -> GroupScores:
    h = parameter_diagonal(ctx.model, ctx.batches, kind, ctx.task)
    with torch.no_grad():
        saliency = {n: 0.5 * h[n] * p**2 for n, p in _params(ctx.model).items()}
    return unit_sums(ctx.groups, saliency)


def group_obd(ctx: GroupContext) -> GroupScores:
    return _second_order(ctx, "gauss-newton")


def group_fisher(ctx: GroupContext) -> GroupScores:
    return _second_order(ctx, "fisher")


def group_taylor(ctx: GroupContext) -> GroupScores:
    params = _params(ctx.model)
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in ctx.groups}
    with evaluating(ctx.model):
        for x, y in ctx.batches:
            with torch.enable_grad():
                loss = ctx.task.loss(first_tensor(ctx.model(x)), y)
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            products = {
                n: p.detach() * g for (n, p), g in zip(params.items(), grads, strict=True)
                if g is not None
            }  # fmt: skip
            for name, total in unit_sums(ctx.groups, products).items():
                scores[name] += total.abs()
    return scores
