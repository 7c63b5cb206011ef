"""Weight sharing and trained quantization (Deep Compression, Han, Mao and Dally 2016).

The kept weights of a layer share at most 2**bits - 1 values, found by a 1-D
k-means, so that a file stores a small codebook and a code of ``bits`` bits per
weight (``export``). K-means alone moves every weight to its centroid and costs
accuracy at few bits; trained quantization then fine-tunes the centroids
themselves: every weight reads its centroid, so a centroid's gradient is the sum of
the gradients of the weights that share it, and the weights move together.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab.splits import AnySplit
from prunelab.tasks import Task
from prunelab.train import EpochRecord, TrainConfig, train


def kmeans_1d(
    values: np.ndarray, clusters: int, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, started from centroids spread linearly over the
    values' range (Deep Compression found this start best for weights).

    Returns (centroids, index of each value's centroid). Deterministic.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    centroids = np.linspace(values.min(), values.max(), clusters)
    assignment = None
    for _ in range(iterations):
        order = np.argsort(centroids)
        centroids = centroids[order]
        # nearest centroid in 1-D: compare with the midpoints between sorted centroids
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        sums = np.bincount(assignment, weights=values, minlength=clusters)
        sizes = np.bincount(assignment, minlength=clusters)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled]  # an empty cluster keeps its centroid
    return centroids.astype(np.float32), assignment


def share_values(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, uint8 codes) of one layer's values: code 0 is the exact zero (pruned
    weights, gap fillers), codes 1 to 2**bits - 1 the centroids of the rest.

    Values that already take at most 2**bits - 1 distinct values (a layer after
    ``train_codebooks``) are kept exactly, not moved by another k-means."""
    values = np.asarray(values, dtype=np.float32)
    real = values != 0
    distinct = np.unique(values[real])
    if len(distinct) <= 2**bits - 1:
        centroids, assignment = distinct, np.searchsorted(distinct, values[real])
    else:
        centroids, assignment = kmeans_1d(values[real], 2**bits - 1)
    codes = np.zeros(len(values), dtype=np.uint8)
    codes[real] = assignment + 1
    return np.r_[np.float32(0), centroids], codes


class SharedWeight(nn.Module):
    """A weight read from its layer's codebook: ``[0, *codebook][codes]``.

    As a ``torch.nn.utils.parametrize`` parametrization the codebook is the parameter
    (``right_inverse`` runs the k-means when a weight is assigned), so the optimizer
    moves centroids, and indexing's backward sums the gradients of the weights that
    share one. Pruned weights read the constant zero: the mask holds without hooks.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("codes", torch.zeros(0, dtype=torch.long))

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.cat([codebook.new_zeros(1), codebook])[self.codes]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        values = weight.detach().cpu().reshape(-1).numpy()
        codebook, codes = share_values(values, self.bits)
        self.codes = torch.from_numpy(codes.astype(np.int64)).view(weight.shape).to(weight.device)
        return torch.from_numpy(codebook[1:]).to(weight)


def shared_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(name, module, attribute) of each weight that ``export.save_sparse`` shares: the
    parameters named weight with two or more dimensions."""
    for name, param in list(model.named_parameters()):
        if name.endswith("weight") and param.dim() >= 2:
            owner, _, attribute = name.rpartition(".")
            yield name, model.get_submodule(owner), attribute


def share_weights_(model: nn.Module, bits: int) -> dict[str, torch.Tensor]:
    """Make each shared weight of ``model`` a read of its own k-means codebook (of
    2**bits - 1 values, 1 to 8 bits); return the codebooks, the parameters to train."""
    if not 1 <= bits <= 8:
        raise ValueError(f"a codebook has 1 to 8 bits per value, not {bits}")
    codebooks = {}
    for name, module, attribute in shared_weights(model):
        parametrize.register_parametrization(module, attribute, SharedWeight(bits))
        codebooks[name] = module.parametrizations[attribute].original
    return codebooks


def unshare_weights_(model: nn.Module) -> None:
    """Make each weight that ``share_weights_`` shared a plain parameter again, holding
    the values its codebook gives."""
    for module in model.modules():
        for attribute in list(getattr(module, "parametrizations", {})):
            if any(isinstance(p, SharedWeight) for p in module.parametrizations[attribute]):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)


def train_codebooks(
    model: nn.Module,
    bits: int,
    train_split: AnySplit,
    val_split: AnySplit,
    config: TrainConfig,
    *,
    seed: int,
    task: str | Task = "classification",
) -> list[EpochRecord]:
    """Deep Compression's trained quantization, in place: share each layer's kept weights
    through a k-means codebook, fine-tune the codebooks (and the other parameters, such
    as biases) with ``train``, and leave each weight holding its codebook's values. Its
    zeros stay where they were; each layer keeps at most 2**bits - 1 other values,
    which ``save_sparse(codebook_bits=bits)`` then stores exactly."""
    share_weights_(model, bits)
    try:
        return train(model, train_split, val_split, config, seed=seed, task=task,
                     desc="train codebooks")  # fmt: skip
    finally:
        unshare_weights_(model)
