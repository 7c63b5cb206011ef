"""Pruning criteria: functions that score weights or units, and never edit the model.

A criterion takes the model, its prunable layers by name, the structure
("weight" or "unit") and optional calibration batches, and returns one score
tensor per layer: the weight's shape for "weight", [out_units] for "unit".
Lower scores are removed first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

Scores = dict[str, torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Criterion = Callable[[nn.Module, dict[str, nn.Module], str, "Batches | None"], Scores]


@torch.no_grad()
def magnitude(
    model: nn.Module, layers: dict[str, nn.Module], structure: str, batches: Batches | None = None
) -> Scores:
    """|w| per weight; the L2 norm of a unit's incoming weights per unit."""
    if structure == "weight":
        return {name: layer.weight.abs() for name, layer in layers.items()}
    return {name: layer.weight.flatten(1).norm(dim=1) for name, layer in layers.items()}


CRITERIA: dict[str, Criterion] = {"magnitude": magnitude}
