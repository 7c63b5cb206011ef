"""Hugging Face's ``Conv1D`` (GPT-2's layers): a Linear layer that stores its weight as
[in, out]. Torch-Pruning does not know it; this pruner tells it how such a layer loses
output and input channels, so that its units group like a ``Linear`` layer's."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn


def hf_conv1d() -> type | None:
    """Hugging Face's ``Conv1D`` class, where ``transformers`` is already in use (it is
    never imported here)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def transposed_linears(model: nn.Module) -> list[type]:
    """Layer types of ``model`` that are Linear layers storing their weight as [in, out]
    (Hugging Face's ``Conv1D``, in GPT-2), which Torch-Pruning does not know."""
    conv1d = hf_conv1d()
    if conv1d is None or not any(isinstance(m, conv1d) for m in model.modules()):
        return []
    return [conv1d]


class TransposedLinearPruner(tp.pruner.function.BasePruningFunc):
    """Removes channels of a Linear layer whose weight is stored [in, out]."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.weight.shape[1], idxs)
        layer.weight = nn.Parameter(layer.weight.data[:, keep].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.data[keep].clone())
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.weight.shape[0], idxs)
        layer.weight = nn.Parameter(layer.weight.data[keep].clone())
        layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


def _kept(size: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[list(removed)] = False
    return keep.nonzero().flatten()
