"""Score, allocate, mask: ``prune`` ties them together for one method and fraction k."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab.models import (
    NothingToPruneError,
    chain_problem,
    evaluating,
    first_tensor,
    is_chain,
    prunable_layers,
)
from prunelab.prune.allocate import allocator
from prunelab.prune.criteria import CRITERIA, NeedsCalibrationError, ScoreContext
from prunelab.prune.group_criteria import GroupContext
from prunelab.prune.group_obs import reconstruct_groups
from prunelab.prune.groups import Graph, dead, group_masks, matches, pattern_names
from prunelab.prune.masks import Masks
from prunelab.prune.method import PruneMethod, check_k
from prunelab.prune.obs import reconstruct
from prunelab.tasks import Task, TaskError, task_of


def prune(
    model: nn.Module,
    method: PruneMethod | str,
    k: float,
    *,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    include_last: bool = False,
    seed: int = 0,
    pruned: Masks | None = None,
    example_inputs=None,
    ignore: Sequence[str] = (),
    include: Sequence[str] | None = None,
    task: str | Task = "classification",
) -> Masks:
    """Prune ``model`` in place by ``method`` (or its name, ``"unit:obd"``) at fraction
    ``k``; return the masks to hold.

    ``batches`` are calibration (input, label) pairs, needed by the criteria that
    look at data (obd, fisher, taylor, obs, obc). ``pruned``, the masks of an
    earlier step (iterative and gradual schedules), stay pruned and count towards k.
    A model that is not a plain ``nn.Sequential`` chain (``models.chain_problem``) is
    traced with ``example_inputs`` (default: the first calibration batch): its output
    layers come from the trace, and a unit is a coupled group (``prunelab.prune.groups``).
    ``ignore`` and ``include`` are fnmatch patterns of layer names. ``task`` (a name of
    ``prunelab.tasks.TASKS`` or a ``Task``) gives the loss that obd, fisher and taylor read.
    """
    method = PruneMethod.parse(method) if isinstance(method, str) else method
    task = task_of(task)
    check_k(k)
    _check_start(model, method, pruned)
    batches = _pairs(batches)
    if batches and CRITERIA[method.criterion].reads_loss:
        _check_task(model, batches[0], task, method.criterion)
    graph = _traced(model, example_inputs, batches)
    _check_patterns(model, ignore, include)
    if graph is not None and method.structure == "unit":
        groups = graph.groups(ignore, include, include_last)
        context = GroupContext(model, groups, batches, seed, task)
        masks = _prune_groups(context, graph.layers(), method, k, pruned)
        masks.apply_(model)
        return masks
    layers = _layers(model, graph, include_last, ignore, include)
    if method.solver_rounds is not None:
        rounds = method.solver_rounds
        updates, masks = reconstruct(model, layers, method.structure, k, batches, rounds,
                                     pattern=method.pattern)  # fmt: skip
        _write(model, updates)
        if pruned is not None:  # a solver prunes zero weights first; this makes it certain
            masks = masks & pruned
    else:
        context = ScoreContext(model, layers, method.structure, batches, seed, task)
        scores = CRITERIA[method.criterion](context)
        if pruned is not None:
            scores = _pruned_first(scores, pruned, method.structure)
        keep = allocator(method.scope)(scores, k)
        masks = Masks.from_keep(layers, keep, method.structure)
    masks.apply_(model)
    return masks


def check_fits(
    model: nn.Module, methods: Sequence[PruneMethod | str], *, example_inputs=None,
    include_last: bool = False, ignore: Sequence[str] = (), include: Sequence[str] | None = None,
) -> None:  # fmt: skip
    """Raise the ValueError that ``prune`` by any of ``methods`` would raise of the model's
    structure, without pruning: a layer whose inputs an N:M pattern does not divide, or
    units where the model has no group to remove. A study checks so before it trains."""
    graph = _traced(model, example_inputs, None)
    _check_patterns(model, ignore, include)
    layers = None  # found once, for the first method that prunes layers
    for method in methods:
        method = PruneMethod.parse(method) if isinstance(method, str) else method
        if graph is not None and method.structure == "unit":
            graph.groups(ignore, include, include_last)
            continue
        layers = layers or _layers(model, graph, include_last, ignore, include)
        if method.pattern is not None:
            for name, layer in layers.items():
                method.pattern.columns(layer.weight.shape, name)


def _traced(model: nn.Module, example_inputs, batches) -> Graph | None:
    """The model's trace, unless it is a plain chain (where definition order is the order
    of computation and a unit is a row): from ``example_inputs``, else from a
    calibration batch."""
    if is_chain(model):
        return None
    if example_inputs is None and batches:
        inputs = batches[0][0]  # a tensor, or a tuple of the model's arguments
        example_inputs = tuple(a[:2] for a in inputs) if isinstance(inputs, tuple) else inputs[:2]
    if example_inputs is None:
        raise ValueError(
            f"{type(model).__name__} is not a plain chain ({chain_problem(model)}): give "
            "example_inputs, what it is called with, so that its output layers and coupled "
            "groups can be traced"
        )
    return Graph(model, example_inputs)


@torch.no_grad()
def _check_task(model: nn.Module, batch: tuple, task: Task, criterion: str) -> None:
    """The task's loss can compare the model's outputs with the batch's targets, or a
    TaskError says so before a criterion that reads the loss fails deep inside."""
    with evaluating(model):
        output = first_tensor(model(batch[0]))
    try:
        task.check(output, batch[1])
    except TaskError as err:
        raise TaskError(f"{criterion} reads the {task.name} loss, which does not fit: {err} "
                        "(is task= right?)") from None  # fmt: skip


def _pairs(batches: Iterable | None) -> list | None:
    """Calibration batches as a list, each checked to be an (inputs, labels) pair."""
    if batches is None:
        return None
    batches = list(batches)
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("calibration batches are (inputs, labels) pairs; got "
                             f"{type(batch).__name__}")  # fmt: skip
    return batches


def _check_patterns(model: nn.Module, ignore: Sequence[str], include: Sequence[str] | None) -> None:
    """Every pattern names some layer: a misspelt one would otherwise change nothing."""
    names = pattern_names(model)
    for pattern in (*ignore, *(include or ())):
        if not any(matches(name, (pattern,)) for name in names):
            raise ValueError(
                f"the layer pattern {pattern!r} matches no Linear or Conv layer or attention module"
            )


def _layers(
    model: nn.Module, graph: Graph | None, include_last: bool,
    ignore: Sequence[str], include: Sequence[str] | None,
) -> dict[str, nn.Module]:  # fmt: skip
    """The layers weight pruning touches: every Linear/Conv but the output layers (from
    the trace where there is one) and those ``ignore`` names, of those ``include`` names."""
    if graph is None:
        layers = prunable_layers(model, include_last=include_last)
    else:
        outputs = () if include_last else graph.output_layers()
        layers = {n: m for n, m in graph.layers().items() if n not in outputs}
    chosen = {
        name: layer for name, layer in layers.items()
        if not matches(name, ignore) and (include is None or matches(name, include))
    }  # fmt: skip
    if not chosen:
        raise NothingToPruneError(f"no layer of {type(model).__name__} is left to prune")
    return chosen


def _prune_groups(
    context: GroupContext,
    readable: dict[str, nn.Module],
    method: PruneMethod,
    k: float,
    pruned: Masks | None,
) -> Masks:
    """Units of coupled groups: scored over every slice, allocated, masked everywhere; or,
    for the solvers (obs, obc), chosen and compensated in the one layer that reads them
    (``readable``: the layers called as modules, whose inputs can be captured)."""
    model, groups, batches = context.model, context.groups, context.batches
    criterion = CRITERIA[method.criterion]
    if criterion.needs_data and not batches:
        raise NeedsCalibrationError(f"criterion {method.criterion!r} needs calibration batches")
    if method.solver_rounds is not None:
        updates, masks = reconstruct_groups(model, groups, readable, k, batches,
                                            method.solver_rounds)  # fmt: skip
        _write(model, updates)
        return masks & pruned if pruned is not None else masks
    if criterion.on_groups is None:
        raise ValueError(f"criterion {method.criterion!r} scores layers, not coupled groups "
                         f"such as {groups[0].name!r}; use another criterion")  # fmt: skip
    scores = criterion.on_groups(context)
    if pruned is not None:  # units pruned before are gone first
        scores = {g.name: scores[g.name].masked_fill(dead(model, g), -math.inf) for g in groups}
    masks = group_masks(model, groups, allocator(method.scope)(scores, k))
    return masks & pruned if pruned is not None else masks


@torch.no_grad()
def _write(model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
    """A solver's new parameter values, written into ``model``."""
    params = dict(model.named_parameters())
    for name, value in updates.items():
        params[name].copy_(value)


def _check_start(model: nn.Module, method: PruneMethod, pruned: Masks | None) -> None:
    """A model pruned by ``torch.nn.utils.prune`` holds ``weight_orig`` where prunelab
    expects ``weight``, and an N:M pattern is chosen in one shot: say so, rather than
    fail on a missing name or keep what was pruned."""
    if method.pattern is not None and pruned is not None:
        raise ValueError(f"{method.pattern} pruning is one-shot: it cannot start from earlier "
                         "masks (an iterative, gradual or lottery schedule)")  # fmt: skip
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


__all__ = ["Masks", "PruneMethod", "check_fits", "check_k", "prune"]
