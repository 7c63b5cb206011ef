"""Criteria x scope x k on MNIST with the seed's network: one-shot and fine-tuned test
accuracy, and the seconds spent choosing what to prune (scoring and OBS solves).

    python benchmarks/criteria.py [--structure weight|unit] [--ks 0.5,0.9,0.95]

Runs through the study (its run directory is --out, so a rerun reuses finished cells).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from prunelab.prune.criteria import CRITERIA
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import fast_cpu_math


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="weight", choices=("weight", "unit"))
    parser.add_argument("--ks", default="0.5,0.9,0.95,0.97")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"),
                        help="of the dense model's training")  # fmt: skip
    parser.add_argument("--calibration", type=int, default=1024, help="calibration images")
    parser.add_argument("--out", type=Path, default=Path("runs/criteria"))
    args = parser.parse_args()
    criteria = args.criteria.split(",")
    methods = [f"{args.structure}:{c}" for c in criteria]
    methods += [
        f"{args.structure}:{c}@global" for c in criteria if CRITERIA[c].solver_rounds is None
    ]
    ks = tuple(float(k) for k in args.ks.split(","))
    config = StudyConfig(methods=tuple(methods), ks=ks, calibration_size=args.calibration)
    config = replace(config, train=replace(config.train, lr_schedule=args.lr_schedule))
    result = run_study(config, RunOptions(out=args.out))
    rows = {(r["method"], r["k"], r["phase"]): r for r in result.results}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dense model trained "
          f"with a {args.lr_schedule} learning rate: test accuracy "
          f"{result.dense['test_metric']:.4f}")  # fmt: skip
    header = " | ".join(f"k={k:g} one-shot / fine-tuned (score s)" for k in ks)
    print(f"| method | {header} |")
    print("|---|" + "---:|" * len(ks))
    for method in dict.fromkeys(r["method"] for r in result.results):
        cells = []
        for k in ks:
            one, tuned = rows[(method, k, "oneshot")], rows[(method, k, "finetuned")]
            cells.append(
                f"{100 * one['test_metric']:.1f} / {100 * tuned['test_metric']:.1f}"
                f" ({one['seconds']:.1f})"
            )
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
