"""Layer-wise Optimal Brain Surgeon: choose what to remove, then correct what remains.

For one layer with inputs X (calibration data, taken from the already pruned
earlier layers) the squared error of its output is quadratic in each weight
row w, with Hessian H = 2 X^T X / N (damped). Removing weight q alone and
re-fitting the others costs w_q^2 / [H^-1]_qq (Hassibi and Stork, 1993). Once a
row's kept set K is chosen, the best kept weights solve the least-squares
problem exactly: w_K = (w_dense H)_K (H_KK)^-1.

* ``obs``: one round: choose by the OBS score of the dense layer, solve once.
* ``obc-rounds``: greedy OBS in several rounds, each followed by the exact solve,
  scoring with the inverse Hessian of what is still kept, so later choices see
  earlier corrections.
* ``obc``: the same with one removal per round (``ONE_AT_A_TIME``), exact Optimal
  Brain Compression (Frantar and Alistarh, 2022), done by downdates (``obc.py``).

Units: removing unit j of a layer zeroes column j of the next layer, a group
removal in that layer's OBS problem; units are chosen by the group's OBS score
and the next layer's kept columns are re-solved (one solve: the kept set is the
same for every row).

Solvers return new weights and masks; they never edit the model they are given.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.prune.allocate import count_to_remove
from prunelab.prune.curvature import Batches, layer_input_hessian
from prunelab.prune.masks import Masks
from prunelab.prune.nm import NM
from prunelab.prune.obc import ONE_AT_A_TIME, greedy_keep, greedy_units

ROW_CHUNK = 128  # rows solved together: bounds the memory of the batched systems
# The per-row systems are solved in float32: twice as fast as float64 on CPU, and
# the damping keeps H_KK well conditioned; H itself is built and inverted in float64.
SOLVE_DTYPE = torch.float32


def solve_rows(
    w_dense: torch.Tensor, h: torch.Tensor, h_inv: torch.Tensor, keep: torch.Tensor,
    with_inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Exact least-squares weights of each row on its kept set (same size for every row).

    Returns the new rows (zero where pruned) and, if asked, the diagonal of each
    row's (H_KK)^-1 scattered to full width (inf where pruned). Each chunk of rows
    is solved on the smaller side: the kept set K, w_K = (w H)_K (H_KK)^-1, or the
    pruned set P, w = w - w_P [(H^-1)_PP]^-1 (H^-1)_P (the multi-weight OBS update).
    """
    rows, d = keep.shape
    m = int(keep[0].sum())
    new = torch.zeros_like(w_dense)
    inv_diag = torch.full_like(w_dense, float("inf")) if with_inverse else None
    if m == 0:
        return new, inv_diag
    h, h_inv, w = h.to(SOLVE_DTYPE), h_inv.to(SOLVE_DTYPE), w_dense.to(SOLVE_DTYPE)
    kept_side = m <= d - m
    size = m if kept_side else d - m
    eye = torch.eye(size, dtype=SOLVE_DTYPE, device=h.device)
    for start in range(0, rows, ROW_CHUNK):
        part = slice(start, start + ROW_CHUNK)
        order = torch.argsort((~keep[part]).to(torch.int8), dim=1, stable=True)
        kept_idx, pruned_idx = order[:, :m], order[:, m:]
        if kept_side:
            chol = torch.linalg.cholesky(h[kept_idx[:, :, None], kept_idx[:, None, :]])
            rhs = (w[part] @ h).gather(1, kept_idx).unsqueeze(-1)
            new[part].scatter_(1, kept_idx, torch.cholesky_solve(rhs, chol)[..., 0].to(new.dtype))
            if with_inverse:  # diag(A^-1) = column sums of (L^-1)^2, with A = L L^T
                l_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
                inv_diag[part].scatter_(1, kept_idx, (l_inv**2).sum(-2).to(new.dtype))
            continue
        chol = torch.linalg.cholesky(h_inv[pruned_idx[:, :, None], pruned_idx[:, None, :]])
        h_inv_rows = h_inv[pruned_idx]  # [chunk, p, d]
        u = torch.cholesky_solve(w[part].gather(1, pruned_idx).unsqueeze(-1), chol)
        solved = w[part] - (u.transpose(1, 2) @ h_inv_rows)[:, 0]
        new[part] = solved.scatter(1, pruned_idx, 0.0).to(new.dtype)
        if (
            with_inverse
        ):  # Schur complement: (H_KK)^-1 = (H^-1)_KK - (H^-1)_KP [(H^-1)_PP]^-1 (H^-1)_PK
            z = torch.linalg.solve_triangular(chol, h_inv_rows, upper=False)
            diag = h_inv.diagonal() - (z**2).sum(1)
            inv_diag[part] = diag.scatter(1, pruned_idx, float("inf")).to(new.dtype)
    return new, inv_diag


def obs_rows(
    w: torch.Tensor, h: torch.Tensor, remove: int, rounds: int = 1, pattern: NM | None = None,
    shape: torch.Size | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Prune ``remove`` weights from every row of ``w`` [rows, d] by (greedy) OBS, or,
    with an N:M ``pattern``, M - N of every group of M of the weight of ``shape`` (the
    kept weights of each row are then re-solved together, as SparseGPT re-fits within
    its N:M choice).

    Returns the corrected weights and the keep mask.
    """
    w_dense, h_inv = w, torch.linalg.inv(h)
    if rounds == ONE_AT_A_TIME:
        keep = greedy_keep(w, h_inv, remove, pattern, shape)
        return solve_rows(w_dense, h, h_inv, keep, with_inverse=False)[0], keep
    keep = torch.ones_like(w, dtype=torch.bool)
    inv_diag = h_inv.diagonal().expand_as(w)
    per = pattern.m - pattern.n if pattern is not None else remove  # per group, or per row
    removed = 0
    for r in range(1, rounds + 1):
        step = round(per * r / rounds) - removed
        if step == 0:
            continue
        score = (w**2 / inv_diag).masked_fill(~keep, float("inf"))
        if pattern is None:
            drop = torch.topk(score, step, dim=1, largest=False).indices
            keep.scatter_(1, drop, False)
        else:  # the lowest kept scores of each group (pruned ones score inf: last)
            keep.scatter_(1, pattern.lowest(score, shape, step), False)
        removed += step
        w, inv_diag = solve_rows(w_dense, h, h_inv, keep, with_inverse=r < rounds)
    return w, keep


def _unit_groups(layer: nn.Module, consumer: nn.Module) -> list[torch.Tensor]:
    """Indices of the consumer's flattened input that each unit of ``layer`` feeds."""
    units = layer.weight.shape[0]
    fan_in = consumer.weight[0].numel()
    if isinstance(consumer, nn.Conv2d) and consumer.in_channels == units:
        size = fan_in // units  # unfold orders inputs channel by channel
    elif isinstance(consumer, nn.Linear) and consumer.in_features % units == 0:
        size = consumer.in_features // units  # 1, or the positions of a flattened channel
    else:
        raise ValueError(
            f"cannot pair the {units} units of {type(layer).__name__} with the inputs of the "
            f"next layer ({type(consumer).__name__}); unit OBS needs a feed-forward chain"
        )
    return [torch.arange(j * size, (j + 1) * size) for j in range(units)]


def choose_units(w: torch.Tensor, h: torch.Tensor, groups, remove: int, rounds: int):
    """Greedy group OBS on the consumer weights ``w`` [rows, d]: which units to remove.

    A unit's score is the least increase of the consumer's error when its group of
    input columns is zeroed and the other columns re-fitted: the sum over rows of
    w_G [(H_KK)^-1]_GG^-1 w_G^T, with K the columns still kept.
    """
    if rounds == ONE_AT_A_TIME:
        return greedy_units(w, h, groups, remove)
    size = len(groups[0])
    kept_units = torch.arange(len(groups))
    removed: list[int] = []
    for r in range(1, rounds + 1):
        step = round(remove * r / rounds) - len(removed)
        if step == 0:
            continue
        kept_idx = torch.cat([groups[int(j)] for j in kept_units])
        h_kk = h[kept_idx][:, kept_idx]
        inv = torch.linalg.inv(h_kk)
        current = (inv @ (w @ h)[:, kept_idx].T).T  # the re-fitted kept weights
        local = torch.arange(len(kept_idx)).view(-1, size)  # each kept unit's columns
        blocks = inv[local[:, :, None], local[:, None, :]]  # [units, size, size]
        wg = current[:, local].permute(1, 2, 0)  # [units, size, rows]
        scores = (wg * torch.linalg.solve(blocks, wg)).sum((1, 2))
        drop = torch.argsort(scores.cpu(), stable=True)[:step]
        removed += kept_units[drop].tolist()
        keep = torch.ones(len(kept_units), dtype=torch.bool)
        keep[drop] = False
        kept_units = kept_units[keep]
    return removed


def _consumers(model: nn.Module) -> dict[nn.Module, nn.Module]:
    chain = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return dict(zip(chain[:-1], chain[1:], strict=True))


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    layers: dict[str, nn.Module],
    structure: str,
    k: float,
    batches: Batches | None,
    rounds: int = 1,
    damping: float = 0.01,
    pattern: NM | None = None,
) -> tuple[dict[str, torch.Tensor], Masks]:
    """Prune ``layers`` one after the other by (greedy) OBS on a copy of ``model``
    (weights: at fraction k, or in an N:M ``pattern``).

    Returns the new values of every parameter that changed, and the masks.
    """
    batches = list(batches or [])
    if not batches:
        raise ValueError(
            "obs, obc and obc-rounds need calibration batches (inputs and labels); none given"
        )
    try:
        return _reconstruct(model, layers, structure, k, batches, rounds, damping, pattern)
    except torch.linalg.LinAlgError as err:
        raise ValueError(
            f"OBS could not factor a layer's input Hessian ({err}); use more calibration data"
        ) from err


def _reconstruct(model, layers, structure, k, batches, rounds, damping, pattern):
    work = copy.deepcopy(model)
    work_layers = {name: work.get_submodule(name) for name in layers}
    consumers = _consumers(work)
    masks: dict[str, torch.Tensor] = {}
    for name, layer in work_layers.items():
        if structure == "weight":
            h = layer_input_hessian(work, layer, batches, damping)
            w = layer.weight.flatten(1).double()
            if pattern is not None:
                pattern.check(k)
                pattern.columns(layer.weight.shape, name)  # or a ValueError naming the layer
            remove = count_to_remove(k, w.shape[1])
            new, keep = obs_rows(w, h, remove, rounds, pattern, layer.weight.shape)
            layer.weight.copy_(new.view_as(layer.weight))
            masks[f"{name}.weight"] = keep.view_as(layer.weight)
            continue
        consumer = consumers.get(layer)
        if consumer is None:
            raise ValueError(f"unit OBS cannot prune {name!r}: no layer consumes its outputs")
        groups = _unit_groups(layer, consumer)
        h = layer_input_hessian(work, consumer, batches, damping)
        w = consumer.weight.flatten(1).double()
        removed = choose_units(w, h, groups, count_to_remove(k, len(groups)), rounds)
        unit_keep = torch.ones(len(groups), dtype=torch.bool, device=w.device)
        unit_keep[removed] = False
        column_keep = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        for j in removed:
            column_keep[groups[j]] = False
        new, _ = solve_rows(w, h, torch.linalg.inv(h), column_keep.expand_as(w), with_inverse=False)
        consumer.weight.copy_(new.view_as(consumer.weight))
        unit_masks = Masks.from_keep({name: layer}, {name: unit_keep}, "unit")
        unit_masks.apply_(work)
        masks.update(unit_masks)
    original = dict(model.named_parameters())
    changed = {
        name: p.detach().clone()
        for name, p in work.named_parameters()
        if not torch.equal(p, original[name])
    }
    return changed, Masks(masks)
