"""2:4 layers for sparse tensor cores: on the CPU, every weight handed to torch is
checked against torch's own compressed 2:4 format (CUTLASS's, which converts on any
device) and the padded layers compute what the pruned ones do; on a GPU, the converted
model is run."""

import pytest
import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensorCUTLASS
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from prunelab import prune
from prunelab.semi_structured import SemiStructuredLinear, is_2to4, to_semi_structured

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of SparseSemiStructuredTensor")


class CutlassOnCpu(SparseSemiStructuredTensorCUTLASS):
    """torch's CUTLASS 2:4 tensor with only its CUDA kernel replaced, so that torch's own
    dispatch (``nn.Parameter``, ``F.linear``, ``addmm``, transposes) runs as on a GPU: the
    weight must be whole tiles, is compressed by torch's converter (which runs on any
    device) and must come back unchanged; products decompress it."""

    given: list[torch.Tensor] = []

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "CutlassOnCpu":
        limits = cls._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
        assert weight.is_contiguous()
        assert weight.shape[0] % limits.sparse_min_rows == 0
        assert weight.shape[1] % limits.sparse_min_cols == 0
        packed, meta = sparse_semi_structured_from_dense_cutlass(weight)
        assert torch.equal(sparse_semi_structured_to_dense_cutlass(packed, meta), weight)
        cls.given.append(weight)
        return cls(weight.shape, packed=packed, meta=meta, packed_t=None, meta_t=None,
                   compressed_swizzled_bitmask=None)  # fmt: skip

    def _mm(self, dense, *, bias=None, should_transpose_dense=False, **kwargs):
        """W @ dense (+ bias per row of W), or (W @ dense^T)^T, as the CUDA kernels do."""
        weight = sparse_semi_structured_to_dense_cutlass(self.packed, self.meta)
        out = weight @ (dense.t() if should_transpose_dense else dense)
        if bias is not None:
            out = out + bias[:, None]
        return out.t() if should_transpose_dense else out


def pruned_2to4(*sizes: int, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    prune(model, "weight@2:4", 0.5, include_last=True)
    return model


def test_2to4_is_counted_per_group_of_4_consecutive_inputs():
    assert is_2to4(pruned_2to4(12, 5)[0].weight)
    weight = torch.zeros(2, 6)
    weight[1, [0, 1, 4, 5]] = 1  # the last group: 2 inputs and 2 of padding
    assert is_2to4(weight)
    weight[1, 2] = 1
    assert not is_2to4(weight)
    weight = torch.zeros(2, 6)
    weight[0, [1, 2, 3]] = 1  # 3 in the first group, though only 3 of 6 in the row
    assert not is_2to4(weight)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_padded_layers_compute_what_the_pruned_ones_do(bias, dtype):
    model = pruned_2to4(784, 1000, 12, 3, bias=bias).to(dtype)
    CutlassOnCpu.given = []
    sparse = to_semi_structured(model, CutlassOnCpu)
    limits = CutlassOnCpu._DTYPE_SHAPE_CONSTRAINTS[dtype]
    assert [tuple(w.shape) for w in CutlassOnCpu.given] == [
        (_up(1000, limits.sparse_min_rows), _up(784, limits.sparse_min_cols)),
        (_up(12, limits.sparse_min_rows), _up(1000, limits.sparse_min_cols)),
        (_up(3, limits.sparse_min_rows), _up(12, limits.sparse_min_cols)),
    ]
    assert all(isinstance(sparse[i].weight, CutlassOnCpu) for i in (0, 2, 4))
    assert not any(m.training for m in sparse.modules()) and model.training  # a copy
    x = torch.randn(5, 784).to(dtype)
    expected = model(x).float()
    tol = 2e-2
    with torch.no_grad():
        torch.testing.assert_close(sparse(x).float(), expected, atol=tol, rtol=tol)
        tokens = x.view(5, 1, 784).expand(5, 2, 784)  # leading dimensions, not contiguous
        torch.testing.assert_close(sparse(tokens)[:, 1].float(), expected, atol=tol, rtol=tol)
        assert sparse(x[:1]).shape == (1, 3)


def test_only_2to4_linear_layers_of_a_supported_dtype_are_converted():
    model = pruned_2to4(64, 32, 8).half()
    model.append(nn.Linear(8, 4).half())  # dense
    sparse = to_semi_structured(model, CutlassOnCpu)
    assert [type(m).__name__ for m in sparse] == ["SemiStructuredLinear", "ReLU",
                                                  "SemiStructuredLinear", "Linear"]  # fmt: skip
    assert type(to_semi_structured(model[0], CutlassOnCpu)) is SemiStructuredLinear
    x = torch.randn(3, 2, 64).half().transpose(0, 1)  # whole tiles wide, not contiguous
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=2e-2, rtol=2e-2)


def test_what_cannot_run_2to4_is_said_clearly():
    dense = nn.Sequential(nn.Linear(8, 4).half())
    with pytest.raises(ValueError, match="no nn.Linear layer of the model is 2:4 sparse"):
        to_semi_structured(dense, CutlassOnCpu)
    with pytest.raises(ValueError, match="prune it 2:4 first"):
        SemiStructuredLinear(dense[0], CutlassOnCpu)
    with pytest.raises(ValueError, match="not torch.float32"):
        SemiStructuredLinear(pruned_2to4(8, 4)[0], CutlassOnCpu)  # 1:2 sparse kernels
    with pytest.raises(ValueError, match="sparse layer '0', layer '2' are torch.float32; .*half"):
        to_semi_structured(pruned_2to4(8, 4, 4), CutlassOnCpu)
    convolutions = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(16, 2))
    prune(convolutions, "weight@2:4", 0.5, example_inputs=torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="only nn.Linear layers are converted"):
        to_semi_structured(convolutions.half(), CutlassOnCpu)
    if not torch.cuda.is_available():  # torch's own classes refuse CPU tensors
        with pytest.raises(ValueError, match="CUDA GPUs"):
            to_semi_structured(pruned_2to4(64, 32).half())


def runs_2to4() -> bool:
    """A GPU with sparse tensor cores that this torch has 2:4 kernels for."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    return torch.backends.cusparselt.is_available() or torch.cuda.get_device_capability()[0] == 8


@pytest.mark.skipif(not runs_2to4(), reason="needs a GPU that torch runs 2:4 kernels on")
def test_on_a_gpu_the_2to4_model_computes_the_dense_one():
    model = pruned_2to4(784, 1000, 500, 10).half().cuda()
    sparse = to_semi_structured(model)
    assert all(type(sparse[i].weight).__name__.startswith("SparseSemiStructured")
               for i in (0, 2, 4))  # fmt: skip
    x = torch.randn(256, 784, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(sparse(x[:1]), model(x[:1]), atol=2e-2, rtol=2e-2)


def _up(size: int, tile: int) -> int:
    return -(-size // tile) * tile
