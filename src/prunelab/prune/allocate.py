"""Allocation: turn scores and a target fraction k into keep-sets (True = kept)."""

from __future__ import annotations

import torch

from prunelab.prune.criteria import Scores


def count_to_remove(k: float, n: int) -> int:
    """``round(k * n)``, but never all ``n``: every layer keeps at least one entry."""
    return min(round(k * n), n - 1)


def layerwise(scores: Scores, k: float) -> dict[str, torch.Tensor]:
    """In every layer remove the ``round(k * n)`` lowest-scoring entries.

    Ties are broken by position (a stable sort), so the result is deterministic.
    """
    keep = {}
    for name, score in scores.items():
        flat = score.flatten()
        remove = count_to_remove(k, flat.numel())
        mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        mask[torch.argsort(flat, stable=True)[:remove]] = False
        keep[name] = mask.view_as(score)
    return keep
