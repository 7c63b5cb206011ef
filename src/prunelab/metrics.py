"""What pruning left: measured from the weights themselves, not from the masks."""

from __future__ import annotations

import torch
import torch.utils.benchmark as benchmark
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunelab.compact import dead_units
from prunelab.models import evaluating, unfused_attention


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
        dead = dead_units(layer)
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


def latency_ms(
    model: nn.Module, example: torch.Tensor, batch: int, min_run_time: float = 0.05
) -> float:
    """Median milliseconds of one forward pass on a batch shaped like ``example``,
    under ``torch.inference_mode`` as a deployed model runs.

    ``torch.utils.benchmark.Timer`` measures it: it synchronizes CUDA around each
    block (GPU kernels are asynchronous, so a plain clock would time the launch)
    and runs with this process's torch thread count.
    """
    x = example[:1].expand(batch, *example.shape[1:]).contiguous()

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    timer = benchmark.Timer("forward()", globals={"forward": forward},
                            num_threads=torch.get_num_threads())  # fmt: skip
    with evaluating(model):
        return 1e3 * timer.blocked_autorange(min_run_time=min_run_time).median


@torch.no_grad()
def flops(model: nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward pass on one sample, as
    ``torch.utils.flop_counter`` counts them (matrix products and convolutions,
    a multiply-add being two). Attention's fused inference kernel, which the counter
    cannot see into, is turned off while counting."""
    with FlopCounterMode(display=False) as counter, evaluating(model), unfused_attention():
        model(example[:1])
    return int(counter.get_total_flops())


@torch.no_grad()
def sparse_flops(model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor) -> int:
    """``flops`` less the multiply-adds of zero weights: what a sparse kernel that
    skips them computes. Each layer is counted on the input it receives (once: a layer
    applied twice in one forward pass has its zeros' share subtracted once)."""
    inputs: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(_module, args, _output) -> None:
            inputs.setdefault(name, args[0])

        return keep

    handles = [layer.register_forward_hook(keeper(name)) for name, layer in layers.items()]
    try:
        total = flops(model, example)
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in layers.items():
        if name in inputs:
            zeros = int((layer.weight == 0).sum())
            total -= flops(layer, inputs[name]) * zeros // layer.weight.numel()
    return total


def nonzero_parameters(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())
