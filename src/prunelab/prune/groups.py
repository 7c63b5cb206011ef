"""Coupled groups: what a structured "unit" is in a network that is not a chain.

Removing output channel c of a convolution also removes entry c of the
BatchNorm after it, input channel c of every layer that reads it, every member
of a residual addition it joins, its offset in a concatenation and its block of
features after a flatten. Torch-Pruning's ``DependencyGraph`` traces the model
and lists these couplings (see docs/DEPENDENCIES.md for why it and not our own
``torch.fx`` pass); this module turns each of its groups into data: for every
tensor of the state dict it touches, along which dimension, which index belongs
to which unit. Masks follow from that alone, and so does compaction.

How a Torch-Pruning handler shortens each tensor is read from the handler itself,
not from a table of layer types: a copy of the module whose entries hold their
own flat index is pruned, and what is gone says which index of which dimension
went with which position (``_unit_of_index``). Any layer Torch-Pruning can prune is a
layer whose groups we can mask.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from prunelab.models import evaluating, output_tensors
from prunelab.prune.heads import AttentionKind, attention_modules, head_units
from prunelab.prune.masks import Masks
from prunelab.prune.transposed import TransposedLinearPruner, transposed_linears

PRUNABLE = (nn.Linear, nn.Conv2d, nn.Conv1d)


class NoGroupError(ValueError):
    """A model has no group of units that masking can remove."""


# Normalizations whose statistics are taken across channels: masking a channel to zero is
# not removing it (the mean and variance still count it), so their groups are left alone.
SHARED_STATISTICS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@dataclass(frozen=True)
class Slice:
    """Along ``dim`` of state-dict tensor ``tensor``, the unit each index belongs to
    (-1: outside the group)."""

    tensor: str
    dim: int
    unit: torch.Tensor  # long, one entry per index of ``dim``


@dataclass(frozen=True)
class Group:
    """Units that are removed together: ``size`` of them, named after the layer whose
    output channels they are."""

    name: str
    size: int
    slices: tuple[Slice, ...]

    def removed(
        self, unit_kept: torch.Tensor, shapes: dict[str, torch.Size]
    ) -> dict[str, torch.Tensor]:
        """Bool per entry of each touched tensor: True where a removed unit reaches it."""
        out: dict[str, torch.Tensor] = {}
        for s in self.slices:
            hit = (s.unit >= 0) & ~unit_kept[s.unit.clamp_min(0)]
            view = [1] * len(shapes[s.tensor])
            view[s.dim] = -1
            hit = hit.view(view).expand(shapes[s.tensor])
            out[s.tensor] = out[s.tensor] | hit if s.tensor in out else hit
        return out


def group_masks(model: nn.Module, groups: Sequence[Group], keep: dict[str, torch.Tensor]) -> Masks:
    """Masks that remove each group's units not in ``keep`` (group name -> bool per unit)
    from every tensor the group touches, normalization statistics included."""
    shapes = {n: t.shape for n, t in model.state_dict().items()}
    masks: dict[str, torch.Tensor] = {}
    for group in groups:
        for name, hit in group.removed(keep[group.name].cpu(), shapes).items():
            kept = ~hit
            masks[name] = masks[name] & kept if name in masks else kept
    return Masks({name: mask.contiguous() for name, mask in masks.items()})


@torch.no_grad()
def dead(model: nn.Module, group: Group) -> torch.Tensor:
    """Bool per unit: every parameter entry the unit reaches is exactly zero, so
    removing the unit changes no output."""
    params = dict(model.named_parameters())
    alive = torch.zeros(group.size, dtype=torch.bool)
    for s in group.slices:
        if s.tensor not in params:
            continue  # a buffer: statistics, not what the unit computes
        nonzero = per_index(params[s.tensor] != 0, s.dim).any(1).cpu()
        inside = s.unit >= 0
        count = torch.zeros(group.size, dtype=torch.long)
        alive |= count.index_add_(0, s.unit[inside], nonzero[inside].long()) > 0
    return ~alive


def per_index(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor`` as rows, one per index of ``dim``."""
    return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)


class Graph:
    """A traced model: its coupled groups and its output layers.

    ``example_inputs`` is what the model is called with (a tensor, or a tuple of
    positional arguments). Layers whose outputs are returned (through position-wise
    operations) are its output layers, found from the trace rather than from
    definition order.
    """

    def __init__(self, model: nn.Module, example_inputs) -> None:
        self.model = model
        self._outputs: list[torch.Tensor] = []
        try:
            with torch.enable_grad(), evaluating(model), _no_cache(model), \
                    warnings.catch_warnings():  # fmt: skip
                # a bare parameter (a per-channel scale) is found along its channel
                # dimension, which the probes read from Torch-Pruning itself
                warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
                pruners = {t: TransposedLinearPruner() for t in transposed_linears(model)}
                self.dependencies = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, output_transform=self._remember,
                    customized_pruners=pruners,
                )  # fmt: skip
        except Exception as err:
            raise ValueError(
                f"cannot trace {type(model).__name__} with the example inputs: "
                f"{type(err).__name__}: {err}"
            ) from err
        self.names = {module: name for name, module in model.named_modules()}
        self.names.update({p: n for n, p in model.named_parameters()})
        self.attention: dict[str, AttentionKind] = attention_modules(model)

    def _remember(self, output) -> list[torch.Tensor]:
        self._outputs = output_tensors(output)
        return self._outputs

    def layers(self) -> dict[str, nn.Module]:
        """The Linear and Conv layers the trace saw called as modules (attention calls its
        output projection functionally: it has no place in the graph)."""
        traced = self.dependencies.module2node
        return {
            n: m for n, m in self.model.named_modules() if isinstance(m, PRUNABLE) and m in traced
        }

    def output_layers(self) -> list[str]:
        """Layers whose output channels reach one of the model's outputs (through
        position-wise operations), whether or not another layer reads them too."""
        returned = {t.grad_fn for t in self._outputs}
        outputs = []
        for name, layer in self.layers().items():
            group = self.dependencies.get_pruning_group(
                layer, self.out_handler(layer), idxs=list(range(_out_channels(layer)))
            )
            reaching = [item for item in group.items if not _is_in_channels(item.dep.handler)]
            if any(item.dep.target.grad_fn in returned for item in reaching):
                outputs.append(name)
        return outputs

    def groups(
        self, ignore: Sequence[str] = (), include: Sequence[str] | None = None,
        include_last: bool = False,
    ) -> list[Group]:  # fmt: skip
        """Every group rooted at a layer named by ``include`` (fnmatch patterns; None:
        every layer) and touching no layer named by ``ignore``. Output layers are left
        out unless ``include_last``: removing an output would remove a class."""
        ignored = [m for n, m in self.layers().items() if matches(n, ignore)]
        if not include_last:
            ignored += [self.model.get_submodule(n) for n in self.output_layers()]
        heads = [g for g in self.head_groups() if _chosen(_members(g), ignore, include)]
        groups = []
        for tp_group in self.dependencies.get_all_groups(
            ignored_layers=ignored, root_module_types=[*PRUNABLE, *transposed_linears(self.model)]
        ):
            root = tp_group.items[0].dep.target.module
            name = self.names[root]
            if include is not None and not matches(name, include):
                continue
            if any(name.startswith(f"{a}.") for a in self.attention):
                continue  # a projection of attention heads: pruned as whole heads
            if any(_unmaskable(i.dep.target.module) for i in tp_group.items):
                continue
            groups.append(self._group(name, tp_group))
        groups += heads
        if not groups:
            raise NoGroupError(
                f"{type(self.model).__name__} has no group of units to prune"
                + (f" matching {list(include)}" if include is not None else "")
                + (f" outside {list(ignore)}" if ignore else "")
                + " (groups through LayerNorm, GroupNorm or a grouped convolution are left "
                "alone: masking cannot remove their channels)"
            )
        return groups

    def head_groups(self) -> list[Group]:
        """One group per attention module: its heads (``prunelab.prune.heads``)."""
        shapes = {n: t.shape for n, t in self.model.state_dict().items()}
        groups = []
        for name, kind in self.attention.items():
            layout = kind.layout(self.model.get_submodule(name))
            slices: dict[tuple[str, int], torch.Tensor] = {}
            for tensor, dim, offset in layout.runs:
                key = (f"{name}.{tensor}", dim)
                units = head_units(layout, shapes[key[0]][dim], offset)
                slices[key] = torch.maximum(units, slices[key]) if key in slices else units
            slices_ = tuple(Slice(t, d, u) for (t, d), u in slices.items())
            groups.append(Group(name, layout.heads, slices_))
        return groups

    def out_handler(self, layer: nn.Module) -> Callable:
        """Torch-Pruning's function that removes a layer's output channels."""
        return self.dependencies.get_pruner_of_module(layer).prune_out_channels

    def _group(self, name: str, tp_group) -> Group:
        slices: dict[tuple[str, int], torch.Tensor] = {}
        size = len(tp_group.items[0].idxs)
        for item in tp_group.items:
            target = item.dep.target.module
            if not _has_tensors(target):
                continue  # a traced operation (add, cat, reshape): nothing stored
            positions = [int(i) for i in item.idxs]
            roots = [int(r) for r in item.root_idxs]
            for (tensor, dim), units in _unit_of_index(item.dep, positions, roots):
                key = (self._tensor_name(target, tensor), dim)
                if key in slices:
                    units = torch.where(units >= 0, units, slices[key])
                slices[key] = units
        return Group(name, size, tuple(Slice(t, d, u) for (t, d), u in slices.items()))

    def _tensor_name(self, target, tensor: str) -> str:
        if isinstance(target, nn.Parameter):
            return self.names[target]
        return f"{self.names[target]}.{tensor}" if self.names[target] else tensor


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@contextlib.contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """A Hugging Face model traced without its key-value cache, whose concatenations of
    past keys are not channels to prune."""
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", False)
    if cached:
        config.use_cache = False
    try:
        yield
    finally:
        if cached:
            config.use_cache = cached


def _members(group: Group) -> list[str]:
    """The names a group answers to: its own and its tensors' modules'."""
    return [group.name, *{s.tensor.rpartition(".")[0] for s in group.slices}]


def _chosen(names: list[str], ignore: Sequence[str], include: Sequence[str] | None) -> bool:
    if any(matches(n, ignore) for n in names):
        return False
    return include is None or any(matches(n, include) for n in names)


def pattern_names(model: nn.Module) -> list[str]:
    """What ``ignore`` and ``include`` patterns may name: Linear and Conv layers (those
    stored transposed too) and attention modules."""
    layers = (*PRUNABLE, *transposed_linears(model))
    return [n for n, m in model.named_modules() if isinstance(m, layers)] + list(
        attention_modules(model)
    )


def _unmaskable(module) -> bool:
    """A member whose channels zeroed are not channels removed: a normalization whose
    statistics are taken across channels still counts them, and a grouped convolution
    (not depthwise) needs every group to lose the same number of channels."""
    if isinstance(module, (*SHARED_STATISTICS, nn.MultiheadAttention)):
        return True  # (attention's model width is tied to its heads' width)
    groups = getattr(module, "groups", 1) if isinstance(module, nn.Module) else 1
    return isinstance(groups, int) and 1 < groups < getattr(module, "in_channels", groups + 1)


def _has_tensors(target) -> bool:
    return isinstance(target, (nn.Module, nn.Parameter)) and bool(_stored_tensors(target))


def _out_channels(layer: nn.Module) -> int:
    return layer.weight.shape[0]


def _is_in_channels(handler) -> bool:
    """A handler that shortens a consumer's inputs (not the channels themselves)."""
    return getattr(handler, "__name__", "").endswith("in_channels")


def _stored_tensors(target) -> dict[str, torch.Tensor]:
    """The floating tensors a target holds: a module's own parameters and buffers, or a
    bare parameter."""
    if isinstance(target, nn.Parameter):
        return {"": target}
    own = dict(target.named_parameters(recurse=False)) | dict(target.named_buffers(recurse=False))
    return {n: t for n, t in own.items() if t is not None and t.is_floating_point() and t.dim() > 0}


@torch.no_grad()
def _unit_of_index(dependency, positions: list[int], roots: list[int]):
    """For each tensor of ``target`` and each dimension the handler shortens, the unit
    (``roots[i]``) whose position (``positions[i]``) removes each index; -1 elsewhere.

    The handler runs on copies whose entries hold their own flat index: once with every
    position, and once per bit of the position's number with the positions that have
    that bit, so that log2(n) + 1 runs say which position each index went with.
    """
    shapes = {n: t.shape for n, t in _stored_tensors(dependency.target.module).items()}
    every = _pruned_indices(dependency, positions, shapes)
    bits = [
        _pruned_indices(dependency, [p for i, p in enumerate(positions) if i >> b & 1], shapes)
        for b in range(max(1, math.ceil(math.log2(len(positions)))))
    ]
    for key, gone in every.items():
        tensor, dim = key
        code = torch.zeros(shapes[tensor][dim], dtype=torch.long)
        for b, removed in enumerate(bits):
            if key in removed:
                code[removed[key]] += 1 << b
        units = torch.full((shapes[tensor][dim],), -1, dtype=torch.long)
        units[gone] = torch.tensor(roots, dtype=torch.long)[code[gone]]
        yield key, units


def _pruned_indices(
    dependency, positions: list[int], shapes: dict[str, torch.Size]
) -> dict[tuple[str, int], torch.Tensor]:
    """Which indices of which dimension of each tensor the dependency's handler removes,
    run on a copy of its target (with the target's pruning dimension, as TP sets it)."""
    if not positions:
        return {}
    probe = copy.deepcopy(dependency.target.module)
    handler = dependency.handler
    if hasattr(handler, "__self__"):
        handler.__self__.pruning_dim = dependency.target.pruning_dim
    for tensor in _stored_tensors(probe).values():
        tensor.data = torch.arange(tensor.numel(), dtype=torch.float64).view(tensor.shape)
    result = handler(probe, positions)
    probe = result if isinstance(result, (nn.Module, nn.Parameter)) else probe
    removed = {}
    for name, after in _stored_tensors(probe).items():
        before = shapes[name]
        for dim, size in enumerate(before):
            if after.shape[dim] == size:
                continue
            if after.numel() == 0:
                kept = torch.zeros(0, dtype=torch.long)
            else:
                flat = after.detach().reshape(-1).long()
                coords = torch.stack(torch.unravel_index(flat, before))
                kept = coords[dim].unique()
            gone = torch.ones(size, dtype=torch.bool)
            gone[kept] = False
            removed[(name, dim)] = gone.nonzero().flatten()
    return removed
