"""Sparse inference on CPU: linear layers whose mostly-zero weights are multiplied in
CSR form (``benchmarks/inference.py`` measures when that pays, and against what)."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.inline import inline_calls


def csr_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor,
    row_starts: torch.Tensor, values: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """y = x Wᵀ + b for a CSR weight ``W`` (``columns``, ``row_starts`` and ``values`` are
    its parts) and inputs of any leading shape (tokens [B, T, D] are B * T rows).

    One row takes torch's sparse matrix-vector product. Several take an embedding bag:
    row r of ``W xᵀ`` sums ``values * xᵀ[columns]`` over r's slice of the CSR arrays, which
    ``embedding_bag`` computes in one fused kernel, faster than torch's CSR matrix product
    (``benchmarks/inference.py``: the seed's MLP at batch 256 runs 2.2x faster at 90%
    sparsity, 1.3x at 99%).
    """
    if x.shape[0] == 1 and x.dim() == 2:  # one sample: the case where every call counts
        return torch.addmv(bias, weight, x.view(-1)).view(1, -1)
    if x.numel() == x.shape[-1]:  # one row in another shape
        return torch.addmv(bias, weight, x.reshape(-1)).view(*x.shape[:-1], -1)
    rows = x.reshape(-1, x.shape[-1])
    out = F.embedding_bag(columns, rows.T.contiguous(), row_starts, mode="sum",
                          per_sample_weights=values, include_last_offset=True)  # fmt: skip
    # Bias added in place: the result stays a transposed view, which the next sparse
    # layer reads as the embedding bag's table without a copy.
    return out.add_(bias[:, None]).T.reshape(*x.shape[:-1], weight.shape[0])


class CSRLinear(nn.Module):
    """A linear layer whose weight is a CSR sparse matrix: y = x Wᵀ + b.

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
        self.bias = bias if bias is not None else layer.weight.new_zeros(layer.out_features)

    def parts(self) -> tuple[torch.Tensor, ...]:
        """The arguments after ``x`` of ``csr_linear``."""
        w = self.weight
        return w, self.bias, w.col_indices(), w.crow_indices(), w.values()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return csr_linear(x, *self.parts())


# Modules whose fused inference kernel (or functional call) reads their Linear layers'
# weights as dense tensors.
FUSED = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)


def to_csr(
    model: nn.Module, max_density: float = 0.5, *, inline: bool = True,
    example: torch.Tensor | None = None,
) -> nn.Module:  # fmt: skip
    """A copy of the network for CPU inference with each mostly-zero linear layer's
    weight in CSR form; denser layers (the dense logits layer, say) stay dense, where they
    are faster, and so do the layers of a module with a fused kernel (``FUSED``).

    With ``inline``, where ``torch.fx`` can trace the network, the copy is a traced graph
    that calls the layers' functions directly (``prunelab.inline``; checked against the
    network on ``example`` where one is given): at batch 1 a 99%-sparse layer's product
    takes a few microseconds, about what calling a module costs. Without, or where it
    cannot be traced, it is the network with its layers replaced by ``CSRLinear`` modules.
    """
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
    if not inline:
        return sparse
    return inline_calls(sparse, {CSRLinear: lambda m: (csr_linear, m.parts())}, example)
