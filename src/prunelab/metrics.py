"""What pruning left: measured from the weights themselves, not from the masks."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def weight_sparsity(layers: dict[str, nn.Module]) -> float:
    """Fraction of exactly-zero weights over the given layers."""
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers.values())
    total = sum(layer.weight.numel() for layer in layers.values())
    return zeros / total


@torch.no_grad()
def units_removed(layers: dict[str, nn.Module]) -> float:
    """Fraction of output units whose incoming weights and bias are all zero."""
    removed, total = 0, 0
    for layer in layers.values():
        dead = (layer.weight.flatten(1) == 0).all(dim=1)
        if layer.bias is not None:
            dead &= layer.bias == 0
        removed += int(dead.sum())
        total += dead.numel()
    return removed / total


@torch.no_grad()
def per_layer(layers: dict[str, nn.Module]) -> list[dict]:
    """Weights, sparsity, units and fraction of units removed, layer by layer."""
    rows = []
    for name, layer in layers.items():
        rows.append(
            {
                "layer": name,
                "weights": layer.weight.numel(),
                "sparsity": weight_sparsity({name: layer}),
                "units": layer.weight.shape[0],
                "units_removed": units_removed({name: layer}),
            }
        )
    return rows


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, batch: int, repeats: int) -> float:
    """Median milliseconds of one forward pass on a batch shaped like ``example``,
    under ``torch.inference_mode`` as a deployed model runs."""
    x = example[:1].expand(batch, *example.shape[1:]).contiguous()
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def nonzero_parameters(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())
