"""Compaction: turn a unit-pruned network into a physically smaller one.

A removed unit has an all-zero row of incoming weights and a zero bias, so its
output is act(0) = 0 for the activations allowed here. Dropping it (the row and
the bias) together with the columns of the next layer that read it (for a
convolution, the input channel; across a flatten, the channel's features)
leaves the network's outputs unchanged and its matrix products smaller.

Works on any ``nn.Sequential`` chain of Linear, Conv2d, elementwise activations
with f(0) = 0, pooling, dropout and flatten; anything else is refused, since
its effect on a removed unit's zeros is not known.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from prunelab.models import (
    call_with,
    chain_problem,
    evaluating,
    is_chain,
    output_tensors,
    unfused_attention,
)


class CompactionError(ValueError):
    """The model cannot be compacted safely."""


@torch.no_grad()
def dead_units(layer: nn.Module) -> torch.Tensor:
    """Bool per output unit: incoming weights and bias all exactly zero."""
    dead = (layer.weight.flatten(1) == 0).all(dim=1)
    if layer.bias is not None:
        dead &= layer.bias == 0
    return dead


def _check(model: nn.Module) -> list[nn.Module]:
    problem = chain_problem(model)
    if problem is not None:
        raise CompactionError(f"{problem}; give example_inputs to compact any traced model")
    return list(model)


@torch.no_grad()
def _shrunk(layer: nn.Module, keep_out: torch.Tensor, keep_in: torch.Tensor | None) -> nn.Module:
    weight = layer.weight[keep_out]
    if keep_in is not None:
        weight = weight[:, keep_in]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    else:
        new = nn.Conv2d(
            weight.shape[1], weight.shape[0], layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, bias=layer.bias is not None,
        )  # fmt: skip
    new = new.to(weight.device, weight.dtype)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias[keep_out])
    return new


def compact(model: nn.Module, example_inputs=None) -> nn.Module:
    """A new, smaller module that computes what ``model`` computes; ``model`` is not
    changed.

    A plain chain: units whose incoming weights and bias are all zero are removed from
    every Linear/Conv2d layer but the last (whose outputs are the model's outputs),
    with the inputs of the following layer that read them. Any other model is traced
    with ``example_inputs``, and a unit of a coupled group whose every parameter entry
    is zero (what ``prune`` leaves) is removed from every tensor of the group, by
    Torch-Pruning; the result is the same class, called the same way.
    """
    if is_chain(model) or example_inputs is None:
        return compact_with_indices(model)[0]  # a chain needs no trace; anything else is refused
    return _compact_traced(model, example_inputs)


@torch.no_grad()
def _compact_traced(model: nn.Module, example_inputs) -> nn.Module:
    from prunelab.prune.groups import Graph, dead  # Torch-Pruning, when needed
    from prunelab.prune.heads import shrink_heads

    small = copy.deepcopy(model)
    graph = Graph(small, example_inputs)
    removals, heads = [], {}
    for group in graph.groups():
        alive = ~dead(small, group)
        if not alive.any():  # keep one unit so that every shape stays valid
            alive[0] = True
        if alive.all():
            continue  # (an attention module keeps its own, fused, form)
        if group.name in graph.attention:
            heads[group.name] = alive.nonzero().flatten()
        else:
            gone = (~alive).nonzero().flatten().tolist()
            removals.append((small.get_submodule(group.name), gone))
    for root, gone in removals:  # all found first: pruning shortens the tensors
        graph.dependencies.get_pruning_group(root, graph.out_handler(root), idxs=gone).prune()
    for name, keep in heads.items():
        shrink_heads(small, name, graph.attention[name], keep)
    _check_same_outputs(model, small, example_inputs)
    return small


def _check_same_outputs(model: nn.Module, small: nn.Module, example_inputs) -> None:
    """The compacted model must compute what the masked one does; an operation that mixes
    channels (a mean over them, a functional normalization) would make it differ. Both
    run in full float32 precision (no TF32 on a GPU), which would blur the comparison."""
    with evaluating(model), evaluating(small), _full_precision():
        try:
            expected = output_tensors(call_with(model, example_inputs))
            pairs = list(zip(expected, output_tensors(call_with(small, example_inputs)),
                             strict=True))  # fmt: skip
            differ = [float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
                      for a, b in pairs if a.is_floating_point()]  # fmt: skip
        except (RuntimeError, ValueError) as err:
            message = (
                f"the compacted model fails where the masked one runs: {err} (an attention "
                "module that prunelab.prune.heads.ATTENTION does not know is pruned by "
                "channel, which its head reshapes cannot take: add an entry for it)"
            )
            raise CompactionError(message) from err
    if not pairs:
        raise CompactionError("the model returns no tensor to compare the compacted one by")
    if max(differ, default=0.0) > 1e-4:
        raise CompactionError(
            f"the compacted model differs from the masked one (relative {max(differ):.1e}): "
            "an operation mixes the removed channels with the kept ones"
        )


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """Float32 throughout (no TF32 on a GPU), and attention by the same plain kernel in
    both models (not a fused one in the original and another in the compacted form)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with unfused_attention(), sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


Kept = list[tuple[int, torch.Tensor, torch.Tensor | None]]  # (position, rows, columns)


def compact_with_indices(model: nn.Module) -> tuple[nn.Sequential, Kept]:
    """``compact``, and for each weighted layer the rows and columns it kept."""
    modules = _check(model)
    kept: Kept = []
    weighted = [i for i, m in enumerate(modules) if isinstance(m, (nn.Linear, nn.Conv2d))]
    last = weighted[-1]
    out: list[nn.Module] = []
    keep_in: torch.Tensor | None = None  # alive channels/features entering the next layer
    units_before = 0  # output units of the last weighted layer, before compaction
    flattened_from: int | None = None  # channels that a flatten turned into features
    for i, module in enumerate(modules):
        if isinstance(module, nn.Flatten):
            flattened_from = None if keep_in is None else units_before
            out.append(nn.Flatten())
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            out.append(module)
            continue
        columns = keep_in
        if keep_in is not None and flattened_from is not None:
            if not isinstance(module, nn.Linear) or module.in_features % flattened_from:
                raise CompactionError(f"layer {i} does not read whole flattened channels")
            per_channel = module.in_features // flattened_from
            columns = (keep_in.view(-1, 1) * per_channel + torch.arange(per_channel)).flatten()
            columns = columns.to(module.weight.device)
            flattened_from = None
        if i == last:
            keep_out = torch.arange(module.weight.shape[0], device=module.weight.device)
        else:
            alive = ~dead_units(module)
            if not alive.any():  # keep one unit so that every shape stays valid
                alive[0] = True
            keep_out = alive.nonzero().flatten()
        out.append(_shrunk(module, keep_out, columns))
        kept.append((i, keep_out, columns))
        keep_in, units_before = keep_out.cpu(), module.weight.shape[0]
    return nn.Sequential(*out), kept


@torch.no_grad()
def expand_(model: nn.Module, compacted: nn.Module, kept: Kept) -> None:
    """Write the weights of ``compacted`` back into ``model`` at the kept positions
    (the inverse of ``compact_with_indices``); removed units stay zero."""
    for i, rows, columns in kept:
        full, small = model[i], compacted[i]
        if columns is None:
            full.weight[rows] = small.weight
        else:
            full.weight[rows[:, None], columns.to(rows.device)[None, :]] = small.weight
        if full.bias is not None:
            full.bias[rows] = small.bias


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
