"""Forward-pass latency of what pruning leaves, as a ratio to the dense model.

The seed's MLP (untrained weights: latency does not depend on their values) is
pruned at each k by units (then compacted: a smaller dense network) and by
weights (then stored as torch CSR sparse matrices). The masked forms cost what
the dense model costs, since their zeros still take part in dense products.

    python benchmarks/inference.py [--ks 0.5,0.9,0.95,0.99] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from prunelab.compact import compact
from prunelab.csr import to_csr
from prunelab.metrics import latency_ms
from prunelab.models import ModelConfig, build_model
from prunelab.prune import PruneMethod, prune
from prunelab.train import fast_cpu_math


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="0.5,0.9,0.95,0.99")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    dense = build_model(ModelConfig(), seed=0).eval()
    example = torch.rand(1, 1, 28, 28)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median forward time")
    print("| k | batch | dense (ms) | masked | unit, compacted | weight, CSR sparse |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in (float(v) for v in args.ks.split(",")):
        unit = copy.deepcopy(dense)
        prune(unit, PruneMethod("unit"), k)
        compacted = compact(unit).eval()
        weight = copy.deepcopy(dense)
        prune(weight, PruneMethod("weight"), k)
        sparse = to_csr(weight).eval()
        forms = (dense, weight, compacted, sparse)
        for batch in (1, 256):
            # Rounds alternate the forms, so that a slow spell of the machine
            # falls on all of them alike; each form's time is its median round.
            rounds = [
                [latency_ms(m, example, batch, min_run_time=0.2) for m in forms]
                for _ in range(args.rounds)
            ]
            base, *cells = (statistics.median(column) for column in zip(*rounds, strict=True))
            ratios = " | ".join(f"{t:.3f} ms ({base / t:.1f}x)" for t in cells)
            print(f"| {k:g} | {batch} | {base:.3f} | {ratios} |")


if __name__ == "__main__":
    main()
