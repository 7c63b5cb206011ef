"""Sparse inference on CPU: linear layers whose mostly-zero weights are multiplied in
torch's CSR format (``benchmarks/inference.py`` measures when that pays)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


class CSRLinear(nn.Module):
    """A linear layer whose weight is a CSR sparse matrix: y = (W x^T)^T + b.

    Indices are stored as int32: with int64 ones torch converts them on every
    call, which doubles the cost of a small matrix-vector product.
    """

    def __init__(self, layer: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = layer.weight.detach().to_sparse_csr()
            self.weight = torch.sparse_csr_tensor(
                csr.crow_indices().int(),
                csr.col_indices().int(),
                csr.values(),
                csr.shape,
                check_invariants=True,
            )
        bias = layer.bias.detach() if layer.bias is not None else None
        self.bias = bias if bias is not None else torch.zeros(layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # tokens [B, T, D] as B * T rows
        if rows.shape[0] == 1:  # one sparse matrix-vector product: the cheapest path
            out = torch.addmv(self.bias, self.weight, rows[0]).unsqueeze(0)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, rows.T).T
        return out.reshape(*x.shape[:-1], -1)


# Modules whose fused inference kernel (or functional call) reads their Linear layers'
# weights as dense tensors.
FUSED = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)


def to_csr(model: nn.Module, max_density: float = 0.5) -> nn.Module:
    """A copy of the network with each mostly-zero linear layer's weight in torch's CSR
    format; denser layers (the dense logits layer, say) stay dense, where they are faster,
    and so do the layers of a module with a fused kernel (``FUSED``)."""
    sparse = copy.deepcopy(model)
    fused = {f"{n}.{c}" if n else c for n, m in sparse.named_modules() if isinstance(m, FUSED)
             for c, _ in m.named_modules() if c}  # fmt: skip
    for name, module in list(sparse.named_modules()):
        if (
            isinstance(module, nn.Linear)
            and name not in fused
            and float((module.weight != 0).float().mean()) <= max_density
        ):
            if not name:
                return CSRLinear(module)
            parent, _, child = name.rpartition(".")
            setattr(sparse.get_submodule(parent), child, CSRLinear(module))
    return sparse
