"""N:M-sparse weights stored compressed: for every group of M (``prunelab.prune.nm``),
its N kept values, and their places in the group bit-packed at ceil(log2 M)
bits each (2 bits for 2:4: an eighth of the values' bytes at float16, as sparse
tensor cores hold their metadata). ``export.save_sparse`` uses it for the layers
whose every group has at most N non-zeros, and CSR for the rest.
"""

from __future__ import annotations

import math

import torch

from prunelab import bitpack
from prunelab.prune.nm import NM


def bits_for(pattern: NM) -> int:
    return max(1, math.ceil(math.log2(pattern.m)))


def encode(weight: torch.Tensor, pattern: NM) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(values [rows, groups, N], packed places) of ``weight``, or None where it does not
    follow the pattern (M does not divide its rows, or a group has over N non-zeros)."""
    if weight.shape[1] % pattern.m:
        return None
    grouped = pattern.grouped(weight.detach().cpu().float().flatten(1), weight.shape)
    nonzero = grouped != 0
    if (nonzero.sum(-1) > pattern.n).any():
        return None
    # the non-zeros first (a group with fewer than N pads with zero-valued places)
    places = torch.argsort(nonzero.to(torch.int8), dim=-1, descending=True, stable=True)
    places = places[..., : pattern.n].sort(-1).values
    packed = bitpack.pack(places.numpy(), bits_for(pattern))
    return grouped.gather(-1, places), torch.from_numpy(packed)


def decode(
    values: torch.Tensor, packed: torch.Tensor, shape: list[int], pattern: NM
) -> torch.Tensor:
    """The weight of ``shape`` back from ``encode``'s values and places; a ValueError
    where they do not fit it."""
    if len(shape) < 2 or shape[1] % pattern.m:
        raise ValueError(f"a weight of {shape} cannot be stored {pattern}")
    rows, groups = shape[0], math.prod(shape[1:]) // pattern.m
    if tuple(values.shape) != (rows, groups, pattern.n):
        raise ValueError(f"N:M values {list(values.shape)} do not fit a weight of {shape}")
    places = bitpack.unpack(packed.numpy(), bits_for(pattern), values.numel())
    if places.size and int(places.max()) >= pattern.m:
        raise ValueError(f"an N:M place falls outside its group of {pattern.m}")
    grouped = torch.zeros(rows, groups, pattern.m, dtype=torch.float32)
    grouped.scatter_(-1, torch.from_numpy(places).long().view_as(values), values.float())
    return pattern.ungrouped(grouped, shape).view(shape)
