"""Unit OBS and OBC on coupled groups: a group whose units one layer reads is pruned as
a chain's units are (``prunelab.prune.obs``). Its units are chosen by the group OBS
score of that layer's input columns, the layer's kept columns are re-fitted to its
calibration inputs, and every other tensor of the group (the producers' rows, their
normalization entries, a head's query and key rows) is masked.

This needs the reader's inputs: a layer called as a module, whose every input column
belongs to the group. A residual channel (read by several layers), a concatenation's
part, or a head whose output projection is called functionally has no such single
problem to solve, and is one error naming the group.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.prune.allocate import count_to_remove
from prunelab.prune.curvature import Batches, layer_input_hessian
from prunelab.prune.groups import Group, Slice, group_masks
from prunelab.prune.masks import Masks
from prunelab.prune.obs import choose_units, solve_rows


@torch.no_grad()
def reconstruct_groups(
    model: nn.Module, groups: list[Group], readable: dict[str, nn.Module], k: float,
    batches: Batches, rounds: int, damping: float = 0.01,
) -> tuple[dict[str, torch.Tensor], Masks]:  # fmt: skip
    """Prune fraction ``k`` of each group's units by (greedy) OBS on its reader, one group
    after the other, on a copy of ``model``; ``readable`` are the layers the trace saw
    called as modules. Returns the new values of every parameter that changed, and the
    masks."""
    batches = list(batches or [])
    if not batches:
        raise ValueError(
            "obs, obc and obc-rounds need calibration batches (inputs and labels); none given"
        )
    work = copy.deepcopy(model)
    readers = {g.name: _reader(work, g, readable) for g in groups}  # every error up front
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    masks = Masks({})
    for group in sorted(groups, key=lambda g: order[g.name]):  # each sees earlier ones
        name, columns = readers[group.name]
        reader = work.get_submodule(name)
        h = layer_input_hessian(work, reader, batches, damping)
        w = reader.weight.flatten(1).double()
        removed = choose_units(w, h, columns, count_to_remove(k, group.size), rounds)
        keep = torch.ones(group.size, dtype=torch.bool)
        keep[removed] = False
        column_keep = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        for j in removed:
            column_keep[columns[j].to(w.device)] = False
        new, _ = solve_rows(w, h, torch.linalg.inv(h), column_keep.expand_as(w),
                            with_inverse=False)  # fmt: skip
        reader.weight.copy_(new.view_as(reader.weight))
        pruned = group_masks(work, [group], {group.name: keep})
        pruned.apply_(work)
        masks = pruned & masks
    original = dict(model.named_parameters())
    changed = {n: p.detach().clone() for n, p in work.named_parameters()
               if not torch.equal(p, original[n])}  # fmt: skip
    return changed, masks


def _reader(model: nn.Module, group: Group, readable: dict[str, nn.Module]):
    """The one layer that reads ``group``'s units, and its flattened input columns of each
    unit; a ValueError naming the group where there is no such layer."""
    layers = dict(model.named_modules())
    reads = [s for s in group.slices if s.dim == 1 and s.tensor.endswith(".weight")
             and isinstance(layers.get(s.tensor[:-7]), (nn.Linear, nn.Conv2d))]  # fmt: skip
    problem = None
    if len(reads) != 1:
        problem = f"is read by {len(reads)} layers"
    elif reads[0].tensor[:-7] not in readable:
        problem = f"is read by {reads[0].tensor[:-7]!r}, which is called functionally"
    elif (reads[0].unit < 0).any():
        problem = f"is read by {reads[0].tensor[:-7]!r} together with other inputs"
    if problem is not None:
        raise ValueError(
            f"OBS re-fits the one layer that reads a group's units; group {group.name!r} "
            f"{problem}: leave it out (ignore=) or use another criterion"
        )
    name = reads[0].tensor[:-7]
    return name, _columns(model.get_submodule(name), reads[0], group.size)


def _columns(reader: nn.Module, read: Slice, units: int) -> list[torch.Tensor]:
    """Each unit's columns of the reader's flattened weight (a convolution's inputs are
    unfolded channel by channel)."""
    per_channel = reader.weight[0, 0].numel()
    columns = [
        ((read.unit == j).nonzero().flatten()[:, None] * per_channel
         + torch.arange(per_channel)).flatten()
        for j in range(units)
    ]  # fmt: skip
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"the units of {read.tensor} read unequal numbers of inputs")
    return columns
