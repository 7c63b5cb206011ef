"""How long tracing and grouping take, by torch.fx, torch.export and Torch-Pruning, on
the models of tests/test_groups.py and a transformer layer (docs/DEPENDENCIES.md).

    python benchmarks/trace_groups.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.fx
import torch_pruning as tp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunelab.models import ModelConfig, build_model  # noqa: E402
from prunelab.prune.groups import Graph  # noqa: E402
from tests.test_groups import HeadFirst  # noqa: E402


def best(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    cases = {
        "resnet20": (build_model(ModelConfig("resnet20")), torch.randn(2, 1, 28, 28)),
        "mobilenetv2": (build_model(ModelConfig("mobilenetv2")), torch.randn(2, 1, 28, 28)),
        "head-first": (HeadFirst(), torch.randn(2, 1, 8, 8)),
        "transformer-layer": (
            nn.TransformerEncoderLayer(64, 4, 128, batch_first=True),
            torch.randn(2, 5, 64),
        ),
    }
    print("| model | torch.fx symbolic_trace | torch.export | TP DependencyGraph "
          "| groups with slices (ours) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, (model, x) in cases.items():
        model.eval()
        ways = (
            lambda m=model: torch.fx.symbolic_trace(m),
            lambda m=model, x=x: torch.export.export(m, (x,)),
            lambda m=model, x=x: tp.DependencyGraph().build_dependency(m, example_inputs=x),
            lambda m=model, x=x: Graph(m, x).groups(),
        )
        cells = []
        for way in ways:
            try:
                cells.append(f"{1000 * best(way):.0f} ms")
            except Exception as err:
                cells.append(f"fails: {type(err).__name__}: {str(err).splitlines()[0][:60]}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
