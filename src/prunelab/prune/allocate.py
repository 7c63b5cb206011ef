"""Allocation: turn scores and a target fraction k into keep-sets (True = kept).

``layerwise`` removes the fraction k in every layer; ``global_`` ranks every
entry of every layer together and removes the k fraction of the total, keeping
at least ``min_keep`` entries in each layer so that no layer is emptied; an
``NM`` scope such as ``2:4`` keeps the best N of every M consecutive weights along
each row's inputs (the pattern sparse tensor cores run), so k is 1 - N/M.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunelab.prune.criteria import Scores


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


@dataclass(frozen=True)
class NM:
    """N:M sparsity: N of every M consecutive weights along a row's inputs are kept."""

    n: int
    m: int

    @classmethod
    def parse(cls, scope: str) -> NM | None:
        """``"2:4"`` as an NM, None for any other scope; a ValueError for 0 < N < M unmet."""
        found = re.fullmatch(r"(\d+):(\d+)", scope)
        if found is None:
            return None
        n, m = int(found[1]), int(found[2])
        if not 0 < n < m:
            raise ValueError(f"an N:M pattern keeps 0 < N < M of every M weights; got {scope}")
        return cls(n, m)

    @property
    def k(self) -> float:
        return 1 - self.n / self.m

    def check(self, k: float) -> None:
        if abs(k - self.k) > 1e-9:
            raise ValueError(f"{self.n}:{self.m} removes exactly {self.k:g} of the weights; "
                             f"give k = {self.k:g}, not {k:g}")  # fmt: skip

    def groups(self, rows: torch.Tensor, name: str = "") -> torch.Tensor:
        """``rows`` [rows, d] as [rows, d / M, M], or a ValueError where M does not divide d."""
        if rows.shape[1] % self.m:
            raise ValueError(f"layer {name!r} has {rows.shape[1]} inputs per row, not a multiple "
                             f"of {self.m}: it cannot be pruned {self.n}:{self.m}")  # fmt: skip
        return rows.reshape(rows.shape[0], -1, self.m)

    def keep(self, score: torch.Tensor, name: str = "") -> torch.Tensor:
        """The N highest scores of every group of M along the last axis of the weight's
        rows (``score`` shaped like the weight), ties by position."""
        grouped = self.groups(score.flatten(1), name)
        order = torch.argsort(grouped, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(grouped, dtype=torch.bool)
        keep.scatter_(-1, order[..., : self.n], True)
        return keep.view_as(score)

    def __call__(self, scores: Scores, k: float) -> dict[str, torch.Tensor]:
        self.check(k)
        return {name: self.keep(score, name) for name, score in scores.items()}


ALLOCATORS = {"layer": layerwise, "global": global_}


def allocator(scope: str) -> Callable[[Scores, float], dict[str, torch.Tensor]]:
    """The allocator of a scope: a registered one, or an N:M pattern."""
    return ALLOCATORS.get(scope) or NM.parse(scope)
