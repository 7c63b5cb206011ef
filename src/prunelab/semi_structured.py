"""2:4 sparse inference on NVIDIA GPUs: linear layers that keep at most 2 of every 4
consecutive inputs run on sparse tensor cores, through torch's semi-structured sparse
tensors (cuSPARSELt where torch was built with it, CUTLASS otherwise).

``benchmarks/semi_structured.py`` times such a model against the dense one in float16.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

from prunelab.inline import has_hooks

DTYPES = (torch.float16, torch.bfloat16)  # float32 runs 1:2 sparse (as TF32), not 2:4


def backend(device: torch.device | None = None) -> type:
    """torch's semi-structured tensor class for a GPU: cuSPARSELt's where torch was built
    with it (it takes smaller tiles), CUTLASS's otherwise, whose kernels torch builds for
    compute capability 8.x only (a ValueError for another ``device``)."""
    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    if device is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major != 8:
            raise ValueError(f"this torch has no cuSPARSELt, and its CUTLASS 2:4 kernels run "
                             f"on compute capability 8.x: {device} is {major}.{minor}")  # fmt: skip
    return SparseSemiStructuredTensorCUTLASS


def is_2to4(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of every row holds at most 2 non-zeros (the
    last group counted with zeros after the row's end)."""
    rows, inputs = weight.shape
    grouped = F.pad(weight != 0, (0, -inputs % 4)).view(rows, -1, 4)
    return bool((grouped.sum(-1) <= 2).all())


class SemiStructuredLinear(nn.Module):
    """An ``nn.Linear`` whose 2:4 weight is a semi-structured sparse tensor.

    torch's kernels take weights of whole tiles only (``kind``'s shape constraints:
    multiples of 16 x 16 for cuSPARSELt in float16, 32 x 64 for CUTLASS), so the weight
    and bias gain zero rows and columns, inputs gain zero features, and the output is cut
    back to ``out_features``: zero columns keep the 2:4 pattern and add nothing.
    """

    def __init__(self, layer: nn.Linear, kind: type | None = None):
        super().__init__()
        kind = kind or backend(layer.weight.device)
        weight = layer.weight.detach()
        if weight.dtype not in DTYPES:
            raise ValueError(f"2:4 sparse kernels take float16 or bfloat16 weights, not "
                             f"{weight.dtype}: convert the model first (model.half())")  # fmt: skip
        if not is_2to4(weight):
            raise ValueError("the weight keeps more than 2 of some 4 consecutive inputs: "
                             "prune it 2:4 first (weight:magnitude@2:4)")  # fmt: skip
        limits = kind._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
        self.in_features, self.out_features = layer.in_features, layer.out_features
        rows = _whole(self.out_features, limits.sparse_min_rows)
        self.pad_inputs = _whole(self.in_features, limits.sparse_min_cols) - self.in_features
        padded = F.pad(weight, (0, self.pad_inputs, 0, rows - self.out_features))
        self.weight = nn.Parameter(kind.from_dense(padded.contiguous()), requires_grad=False)
        self.bias = None
        if layer.bias is not None:
            bias = F.pad(layer.bias.detach(), (0, rows - self.out_features))
            self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's name, for keywords
        x = F.pad(input, (0, self.pad_inputs)) if self.pad_inputs else input
        y = F.linear(x.contiguous(), self.weight, self.bias)
        return y[..., : self.out_features] if y.shape[-1] != self.out_features else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{type(self.weight).__name__}")  # fmt: skip


def to_semi_structured(model: nn.Module, kind: type | None = None) -> nn.Module:
    """A copy of ``model`` for inference on its CUDA GPU, in eval mode, with each 2:4
    sparse ``nn.Linear`` a ``SemiStructuredLinear``.

    The model must be on the GPU in float16 or bfloat16 already (``model.half().cuda()``);
    other layers, subclasses of ``nn.Linear`` and layers with hooks stay as they are.
    ``kind`` is torch's tensor class to use (default: ``backend``'s for the model's GPU).
    """
    linear = {name: m for name, m in model.named_modules()
              if type(m) is nn.Linear and not has_hooks(m) and is_2to4(m.weight)}  # fmt: skip
    chosen = [name for name, m in linear.items() if m.weight.dtype in DTYPES]
    if not chosen and linear:
        dtypes = sorted({str(m.weight.dtype) for m in linear.values()})
        raise ValueError(f"the 2:4 sparse {', '.join(map(_named, linear))} are "
                         f"{', '.join(dtypes)}; 2:4 kernels take float16 or bfloat16 on CUDA "
                         "GPUs: model.half().cuda()")  # fmt: skip
    if not chosen:
        raise ValueError("no nn.Linear layer of the model is 2:4 sparse (torch's 2:4 kernels "
                         "are matrix products: only nn.Linear layers are converted); prune "
                         "with weight:CRITERION@2:4")  # fmt: skip
    kind = kind or backend(model.get_submodule(chosen[0]).weight.device)
    sparse = copy.deepcopy(model).eval()
    for name in chosen:
        try:
            layer = SemiStructuredLinear(sparse.get_submodule(name), kind)
        except RuntimeError as err:  # torch's: not on a GPU, or one without sparse cores
            raise ValueError(f"{_named(name)} cannot run 2:4 sparse ({err}); the kernels run "
                             "on CUDA GPUs of compute capability 8.0 and newer: "
                             "model.half().cuda()") from err  # fmt: skip
        if not name:
            return layer.eval()
        sparse.set_submodule(name, layer)
    return sparse.eval()


def _named(name: str) -> str:
    return f"layer {name!r}" if name else "the model"


def _whole(size: int, tile: int) -> int:
    """``size`` rounded up to whole tiles."""
    return -(-size // tile) * tile
