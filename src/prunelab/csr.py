"""Sparse inference on CPU: linear layers whose mostly-zero weights are multiplied in
CSR form (``benchmarks/inference.py`` measures when that pays, and against what)."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunelab.inline import has_hooks, inline_calls


def csr_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor,
    row_starts: torch.Tensor, values: torch.Tensor, transposed: bool = False,
) -> torch.Tensor:  # fmt: skip
    """y = x Wᵀ + b for a CSR weight ``W`` (``columns``, ``row_starts`` and ``values`` are
    its parts) and inputs of any leading shape (tokens [B, T, D] are B * T rows).

    One row takes torch's sparse matrix-vector product. Several take an embedding bag:
    row r of ``W xᵀ`` sums ``values * xᵀ[columns]`` over r's slice of the CSR arrays, which
    ``embedding_bag`` computes in one fused kernel, faster than torch's CSR matrix product
    (``benchmarks/inference.py``: the seed's MLP at batch 256 runs 2.3x faster at 90%
    sparsity, 1.3x at 99%). Its result is ``W xᵀ``: with ``transposed`` a [rows, out]
    view of it is returned, which the next sparse layer reads without a copy; without,
    a contiguous copy, as ``nn.Linear`` returns.
    """
    width = weight.shape[1]  # other widths fall through to the check, at one row too
    if x.shape[0] == 1 and x.dim() == 2 and x.shape[1] == width:  # one sample: every call counts
        return torch.addmv(bias, weight, x.view(-1)).view(1, -1)
    if x.numel() == x.shape[-1] == width:  # one row in another shape
        return torch.addmv(bias, weight, x.reshape(-1)).view(*x.shape[:-1], -1)
    if x.shape[-1] != width or x.dtype != values.dtype:  # the bag would not say
        raise ValueError(
            f"a linear layer of {width} {values.dtype} inputs was given "
            f"{x.shape[-1]} {x.dtype} ones (shape {tuple(x.shape)})"
        )
    rows = x.reshape(-1, x.shape[-1])
    out = F.embedding_bag(columns, rows.T.contiguous(), row_starts, mode="sum",
                          per_sample_weights=values, include_last_offset=True)  # fmt: skip
    out = out.add_(bias[:, None]).T
    if not transposed:
        out = out.contiguous()
    return out.reshape(*x.shape[:-1], weight.shape[0])


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
        """The arguments after the input of ``csr_linear``."""
        w = self.weight
        return w, self.bias, w.col_indices(), w.crow_indices(), w.values()

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's name, for keywords
        return csr_linear(input, *self.parts())


# Modules whose fused inference kernel (or functional call) reads their Linear layers'
# weights as dense tensors.
FUSED = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
# Weight types torch's CPU sparse matrix-vector product takes.
DTYPES = (torch.float32, torch.float64)


def to_csr(
    model: nn.Module, max_density: float = 0.5, *, inline: bool = True,
    example: torch.Tensor | None = None,
) -> nn.Module:  # fmt: skip
    """A copy of the network for CPU inference, in eval mode, with each mostly-zero
    linear layer's weight in CSR form.

    Denser layers (the dense logits layer, say) stay dense, where they are faster, and
    so do the layers of a module with a fused kernel (``FUSED``), subclasses of
    ``nn.Linear`` (their forward may compute more), layers with hooks, and float16 and
    bfloat16 ones (torch has no CPU sparse kernel for them).

    With ``inline``, where ``torch.fx`` can trace the network, the copy is a traced graph
    that calls the layers' functions directly (``prunelab.inline``; its outputs checked
    against the copy's modules on ``example`` where one is given, an input they must
    run): at batch 1 a 99%-sparse layer's product takes a few microseconds, about what
    calling a module costs. Without, or where it cannot be traced, the layers are
    ``CSRLinear`` modules. The traced graph holds its tensors as plain attributes, not
    parameters: it is a copy to run, saved whole (``torch.save``), not through a state
    dict, and made for the dtype and device it was converted on.
    """
    if not 0 <= max_density <= 1:  # outside, every layer or none would convert, silently
        raise ValueError(
            f"max_density: a fraction of nonzero weights from 0 to 1, not {max_density}"
        )
    if example is not None and not isinstance(example, torch.Tensor):
        raise TypeError(f"example: a tensor, the network's one input, not {type(example)}")
    try:
        sparse = copy.deepcopy(model).eval()
    except RuntimeError as err:  # what torch.nn.utils.prune's reparametrization leaves
        raise ValueError(
            f"cannot copy the model ({err}); a model pruned with torch.nn.utils.prune "
            "copies once its masks are made permanent (torch.nn.utils.prune.remove)"
        ) from err
    fused = {f"{n}.{c}" if n else c for n, m in sparse.named_modules() if isinstance(m, FUSED)
             for c, _ in m.named_modules() if c}  # fmt: skip
    for name, module in list(sparse.named_modules()):
        if (
            type(module) is nn.Linear
            and name not in fused
            and module.weight.dtype in DTYPES
            and not has_hooks(module)
            and float((module.weight != 0).float().mean()) <= max_density
        ):
            if not name:
                return CSRLinear(module)
            sparse.set_submodule(name, CSRLinear(module))
    if not inline:
        return sparse
    traced = inline_calls(sparse, {CSRLinear: lambda m: (csr_linear, m.parts())}, example)
    if isinstance(traced, fx.GraphModule):
        _pass_transposed(traced)
    return traced


# Calls that read a [rows, features] tensor in any layout and return a new one.
_READ_ANY_LAYOUT = (csr_linear, F.linear)
# Calls whose result has their input's layout.
_KEEP_LAYOUT = (torch.relu, torch.relu_)


def _pass_transposed(traced: fx.GraphModule) -> None:
    """Let each sparse product whose result reaches only other products (through
    activations) return it transposed, saving the copy ``nn.Linear``'s layout costs."""

    def layout_free(node: fx.Node) -> bool:
        return bool(node.users) and all(
            (user.target in _READ_ANY_LAYOUT and user.args[0] is node)
            or (user.target in _KEEP_LAYOUT and layout_free(user))
            for user in node.users
        )

    for node in traced.graph.nodes:
        if node.target is csr_linear and layout_free(node):
            node.kwargs = {**node.kwargs, "transposed": True}
    traced.recompile()
