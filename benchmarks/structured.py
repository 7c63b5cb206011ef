"""What unit pruning buys on networks that are not chains: parameters, FLOPs and
latency of the compacted ResNet-20 and MobileNetV2 against the dense network, timed in
the same process (k = fraction of each coupled group's channels removed, by magnitude).

    python benchmarks/structured.py
"""

from __future__ import annotations

import torch

import prunelab
from prunelab.compact import parameter_count
from prunelab.metrics import flops, latency_ms
from prunelab.models import ModelConfig, build_model
from prunelab.train import fast_cpu_math


def main() -> None:
    fast_cpu_math()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | k | params | FLOPs | latency b1 | latency b256 | speed-up b256 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("resnet20", "mobilenetv2"):
        dense = build_model(ModelConfig(name), seed=0).eval()
        base = {"params": parameter_count(dense), "flops": flops(dense, x[:1])}
        base_b1, base_b256 = latency_ms(dense, x, 1), latency_ms(dense, x, 256)
        print(f"| {name} | 0 | {base['params']:,} | {base['flops'] / 1e6:.1f} M | "
              f"{base_b1:.2f} ms | {base_b256:.1f} ms | 1.00x |")  # fmt: skip
        for k in (0.5, 0.75):
            model = build_model(ModelConfig(name), seed=0).eval()
            prunelab.prune(model, "unit", k, example_inputs=x)
            small = prunelab.compact(model, example_inputs=x)
            b1, b256 = latency_ms(small, x, 1), latency_ms(small, x, 256)
            print(f"| {name} | {k:g} | {parameter_count(small):,} | "
                  f"{flops(small, x[:1]) / 1e6:.1f} M | {b1:.2f} ms | {b256:.1f} ms | "
                  f"{base_b256 / b256:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
