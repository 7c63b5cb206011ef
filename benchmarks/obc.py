"""Exact OBC against the solvers that approximate it, on the default study's base model:
one-shot test accuracy, and the seconds spent choosing and correcting, also counted in
epochs of fine-tuning the same model (that cell's epoch, in the same process).

    python benchmarks/obc.py [--ks 0.95] [--out runs/obc]

Runs through the study: a rerun reuses finished cells (and their timings); give a new
--out to time again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from prunelab.prune import PruneMethod
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import fast_cpu_math

METHODS = ("weight:obs", "weight:obc-rounds", "weight:obc")


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="0.95")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=Path("runs/obc"))
    args = parser.parse_args()
    ks = tuple(float(k) for k in args.ks.split(","))
    methods = tuple(PruneMethod.parse(m).name for m in args.methods.split(","))
    config = StudyConfig(methods=methods, ks=ks)
    result = run_study(config, RunOptions(out=args.out))
    rows = {(r["method"], r["k"], r["phase"]): r for r in result.results}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dense test accuracy "
          f"{result.dense['test_metric']:.4f}")  # fmt: skip
    print("| method | k | one-shot test accuracy | seconds | in fine-tuning epochs |")
    print("|---|---:|---:|---:|---:|")
    for method in config.methods:
        for k in ks:
            one, tuned = rows[(method, k, "oneshot")], rows[(method, k, "finetuned")]
            epochs = one["seconds"] / tuned["seconds"]
            print(f"| {method} | {k:g} | {100 * one['test_metric']:.2f}% | "
                  f"{one['seconds']:.1f} | {epochs:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
