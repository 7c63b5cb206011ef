"""Forward-pass latency of what pruning leaves, in each runtime that can run it, as a
ratio to the dense model run by eager PyTorch.

The seed's MLP (untrained weights: latency does not depend on their values) is pruned
at each k by units, then compacted (a smaller dense network), and by weights, then kept
sparse. Each form runs in the runtimes that can run it:

- dense forms (the dense, masked and compacted models): eager PyTorch,
  ``torch.compile`` and onnxruntime (from ``prunelab.save_onnx``);
- the weight-pruned model: ``prunelab.to_csr`` (torch's CSR product at batch 1, an
  embedding bag above, module calls inlined), the same as ``CSRLinear`` modules,
  torch's CSR matrix products alone, scipy's CSR product (where scipy is installed) and
  torch's blocked BSR format (2x2 blocks, the only shape its CPU kernel takes).

The fastest runtime of each form is in bold.

    python benchmarks/inference.py [--ks 0.5,0.9,0.95,0.99] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunelab.compact import compact
from prunelab.csr import CSRLinear, to_csr
from prunelab.metrics import latency_ms
from prunelab.models import ModelConfig, build_model
from prunelab.onnx_format import OnnxModel, save_onnx
from prunelab.prune import PruneMethod, prune
from prunelab.train import fast_cpu_math

EXAMPLE = torch.rand(1, 1, 28, 28)


class ScipyLinear(nn.Module):
    """A CSR layer multiplied by scipy: torch to numpy and back without copies."""

    def __init__(self, layer: CSRLinear):
        super().__init__()
        import scipy.sparse

        w = layer.weight
        self.weight = scipy.sparse.csr_matrix(
            (w.values().numpy(), w.col_indices().numpy(), w.crow_indices().numpy()), w.shape
        )
        self.bias = layer.bias.numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).numpy()
        return torch.from_numpy((self.weight @ rows.T).T + self.bias)


class SparseProductLinear(nn.Module):
    """A CSR layer multiplied by torch's sparse matrix products, its weight in CSR or in
    another format (``layout`` converts the CSR weight)."""

    def __init__(self, layer: CSRLinear, layout: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.weight = layout(layer.weight)
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 1:
            return torch.addmv(self.bias, self.weight, rows[0]).unsqueeze(0)
        return torch.addmm(self.bias[:, None], self.weight, rows.T).T


def csr_layers_as(layer: Callable[[CSRLinear], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """A conversion of the MLP whose CSR layers (its children) become ``layer`` of them."""

    def convert(model: nn.Module) -> nn.Module:
        sparse = to_csr(model, inline=False)
        for name, module in list(sparse.named_children()):
            if isinstance(module, CSRLinear):
                setattr(sparse, name, layer(module))
        return sparse

    return convert


def in_onnxruntime(model: nn.Module) -> nn.Module:
    with tempfile.TemporaryDirectory() as folder:  # the session keeps what it read
        save_onnx(model, Path(folder) / "model.onnx", EXAMPLE)
        # Spinning threads would take the cores from the runtimes timed in between.
        return OnnxModel(Path(folder) / "model.onnx", spinning=False)


def compiled(model: nn.Module) -> nn.Module:
    return torch.compile(copy.deepcopy(model), dynamic=False)


DENSE_RUNTIMES = {"eager": lambda m: m, "torch.compile": compiled, "onnxruntime": in_onnxruntime}
SPARSE_RUNTIMES = {
    "prunelab.to_csr": lambda m: to_csr(m, example=EXAMPLE),
    "CSRLinear modules": lambda m: to_csr(m, inline=False),
    "torch CSR product": csr_layers_as(lambda m: SparseProductLinear(m, lambda w: w)),
    "scipy CSR": csr_layers_as(ScipyLinear),
    "torch BSR 2x2": csr_layers_as(
        lambda m: SparseProductLinear(m, lambda w: w.to_dense().to_sparse_bsr((2, 2)))
    ),
}
COLUMNS = [*DENSE_RUNTIMES, *SPARSE_RUNTIMES]


def runtimes(form: nn.Module, table: dict[str, Callable]) -> dict[str, nn.Module]:
    """``form`` in each runtime of ``table`` that is installed."""
    ready = {}
    for name, convert in table.items():
        try:
            ready[name] = convert(form)
        except ImportError:  # scipy or the onnx extra is not installed
            continue
    return ready


def main() -> None:
    fast_cpu_math()
    warnings.filterwarnings("ignore")  # beta sparse formats, ONNX export notes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="0.5,0.9,0.95,0.99")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Each model and batch size is a recompilation of the same forward code; past the
    # default limit (8) dynamo would quietly run the rest eagerly.
    torch._dynamo.config.recompile_limit = 64
    dense = build_model(ModelConfig(), seed=0).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median forward time,")
    print("ratio to the dense model in eager PyTorch; the fastest runtime of each form in bold")
    print(f"| k | batch | form | {' | '.join(COLUMNS)} |")
    print(f"|---:|---:|---|{'---:|' * len(COLUMNS)}")
    baseline = runtimes(dense, DENSE_RUNTIMES)
    for k in (float(v) for v in args.ks.split(",")):
        unit, weight = copy.deepcopy(dense), copy.deepcopy(dense)
        prune(unit, PruneMethod("unit"), k)
        prune(weight, PruneMethod("weight"), k)
        forms = {
            "dense": baseline,
            "masked": {"eager": weight},  # in any runtime, the dense model's matrices
            "unit, compacted": runtimes(compact(unit).eval(), DENSE_RUNTIMES),
            "weight, sparse": runtimes(weight, SPARSE_RUNTIMES),
        }
        for batch in (1, 256):
            times = time_all(forms, batch, args.rounds)
            base = times["dense"]["eager"]
            for form, cells in times.items():
                best = min(cells, key=cells.get)
                shown = [
                    "—" if r not in cells else
                    (f"**{cells[r]:.3f} ms ({base / cells[r]:.1f}x)**" if r == best
                     else f"{cells[r]:.3f} ms ({base / cells[r]:.1f}x)")
                    for r in COLUMNS
                ]  # fmt: skip
                print(f"| {k:g} | {batch} | {form} | {' | '.join(shown)} |")


def time_all(
    forms: dict[str, dict[str, nn.Module]], batch: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Median milliseconds of each form in each runtime. Rounds alternate the models, so
    that a slow spell of the machine falls on all of them alike."""
    models = [(f, r, m) for f, table in forms.items() for r, m in table.items()]
    for _, _, m in models:  # compile or warm up for this batch size outside the timing
        latency_ms(m, EXAMPLE, batch, min_run_time=0.01)
    measured = [[latency_ms(m, EXAMPLE, batch, min_run_time=0.2) for *_, m in models]
                for _ in range(rounds)]  # fmt: skip
    times: dict[str, dict[str, float]] = {}
    for (form, runtime, _), column in zip(models, zip(*measured, strict=True), strict=True):
        times.setdefault(form, {})[runtime] = statistics.median(column)
    return times


if __name__ == "__main__":
    main()
