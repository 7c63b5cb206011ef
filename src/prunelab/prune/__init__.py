"""Score, allocate, mask: ``prune`` ties them together for one method and fraction k."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab.models import prunable_layers
from prunelab.prune.allocate import ALLOCATORS
from prunelab.prune.criteria import CRITERIA, ScoreContext
from prunelab.prune.masks import Masks
from prunelab.prune.method import PruneMethod, check_k
from prunelab.prune.obs import reconstruct


def prune(
    model: nn.Module,
    method: PruneMethod,
    k: float,
    *,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    include_last: bool = False,
    seed: int = 0,
    pruned: Masks | None = None,
) -> Masks:
    """Prune ``model`` in place by ``method`` at fraction ``k``; return the masks to hold.

    ``batches`` are calibration (input, label) pairs, needed by the criteria that
    look at data (obd, fisher, taylor, obs, obc). ``pruned``, the masks of an
    earlier step (iterative and gradual schedules), stay pruned and count towards k.
    """
    check_k(k)
    _refuse_torch_prune_hooks(model)
    layers = prunable_layers(model, include_last=include_last)
    batches = list(batches) if batches is not None else None
    if method.solver_rounds is not None:
        rounds = method.solver_rounds
        updates, masks = reconstruct(model, layers, method.structure, k, batches, rounds)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in updates.items():
                params[name].copy_(value)
        if pruned is not None:  # a solver prunes zero weights first; this makes it certain
            masks = Masks({name: mask & pruned[name] for name, mask in masks.items()})
    else:
        context = ScoreContext(model, layers, method.structure, batches, seed)
        scores = CRITERIA[method.criterion](context)
        if pruned is not None:
            scores = _pruned_first(scores, pruned, method.structure)
        keep = ALLOCATORS[method.scope](scores, k)
        masks = Masks.from_keep(layers, keep, method.structure)
    masks.apply_(model)
    return masks


def _refuse_torch_prune_hooks(model: nn.Module) -> None:
    """A model pruned by ``torch.nn.utils.prune`` holds ``weight_orig`` where prunelab
    expects ``weight``: say so, rather than fail on a missing name."""
    carrying = [
        repr(name) for name, module in model.named_modules()
        if any(isinstance(h, torch_prune.BasePruningMethod)
               for h in module._forward_pre_hooks.values())
    ]  # fmt: skip
    if carrying:
        raise ValueError(
            f"layer(s) {', '.join(carrying)} carry torch.nn.utils.prune masks; read them with "
            "prunelab.Masks.from_torch_prune(model) first (it leaves a plain model)"
        )


def _pruned_first(scores: dict, pruned: Masks, structure: str) -> dict:
    """Scores with the already-pruned entries ranked below every other."""
    ranked = {}
    for name, score in scores.items():
        kept = pruned[f"{name}.weight"]
        if structure == "unit":
            kept = kept.flatten(1).any(1)
        ranked[name] = score.float().masked_fill(~kept, float("-inf"))
    return ranked


__all__ = ["Masks", "PruneMethod", "check_k", "prune"]
