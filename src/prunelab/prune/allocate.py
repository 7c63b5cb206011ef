"""Allocation: turn scores and a target fraction k into keep-sets (True = kept).

``layerwise`` removes the fraction k in every layer; ``global_`` ranks every
entry of every layer together and removes the k fraction of the total, keeping
at least ``min_keep`` entries in each layer so that no layer is emptied; an N:M
scope such as ``2:4`` keeps the best N of every group of M (``prunelab.prune.nm``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunelab.prune.criteria import Scores
from prunelab.prune.nm import NM


def count_to_remove(k: float, n: int, min_keep: int = 1) -> int:
    """``round(k * n)``, but never more than leaves ``min_keep`` entries."""
    return max(0, min(round(k * n), n - min_keep))


def _keep_from_order(order: torch.Tensor, remove: int, numel: int) -> torch.Tensor:
    keep = torch.ones(numel, dtype=torch.bool, device=order.device)
    keep[order[:remove]] = False
    return keep


def layerwise(scores: Scores, k: float) -> dict[str, torch.Tensor]:
    """In every layer remove the ``round(k * n)`` lowest-scoring entries.

    Ties are broken by position (a stable sort), so the result is deterministic.
    """
    keep = {}
    for name, score in scores.items():
        flat = score.flatten()
        remove = count_to_remove(k, flat.numel())
        keep[name] = _keep_from_order(torch.argsort(flat, stable=True), remove, flat.numel())
        keep[name] = keep[name].view_as(score)
    return keep


def global_(scores: Scores, k: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Remove the ``round(k * N)`` lowest scores of all ``N`` entries of all layers.

    Each layer's ``min_keep`` best entries are protected; the total removed is
    exact unless the protected entries make it impossible.
    """
    flats = [score.flatten().float() for score in scores.values()]
    protected = []
    for flat in flats:
        guard = torch.zeros_like(flat, dtype=torch.bool)
        guard[torch.argsort(flat, descending=True, stable=True)[:min_keep]] = True
        protected.append(guard)
    all_scores = torch.cat(flats).masked_fill(torch.cat(protected), float("inf"))
    remove = count_to_remove(k, all_scores.numel(), sum(int(g.sum()) for g in protected))
    keep_all = _keep_from_order(torch.argsort(all_scores, stable=True), remove, all_scores.numel())
    keep, start = {}, 0
    for (name, score), flat in zip(scores.items(), flats, strict=True):
        keep[name] = keep_all[start : start + flat.numel()].view_as(score)
        start += flat.numel()
    return keep


ALLOCATORS = {"layer": layerwise, "global": global_}


def allocator(scope: str) -> Callable[[Scores, float], dict[str, torch.Tensor]]:
    """The allocator of a scope: a registered one, or an N:M pattern."""
    return ALLOCATORS.get(scope) or NM.parse(scope)
