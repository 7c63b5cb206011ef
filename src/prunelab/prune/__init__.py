"""Score, allocate, mask: ``prune`` ties the three together for one method and k."""

from __future__ import annotations

from torch import nn

from prunelab.models import prunable_layers
from prunelab.prune.allocate import layerwise
from prunelab.prune.criteria import CRITERIA, Batches
from prunelab.prune.masks import Masks
from prunelab.prune.method import PruneMethod, check_k


def prune(
    model: nn.Module,
    method: PruneMethod,
    k: float,
    *,
    batches: Batches | None = None,
    include_last: bool = False,
) -> Masks:
    """Prune ``model`` in place by ``method`` at fraction ``k``; return the masks to hold."""
    check_k(k)
    layers = prunable_layers(model, include_last=include_last)
    scores = CRITERIA[method.criterion](model, layers, method.structure, batches)
    masks = Masks.from_keep(layers, layerwise(scores, k), method.structure)
    masks.apply_(model)
    return masks


__all__ = ["Masks", "PruneMethod", "check_k", "prune"]
