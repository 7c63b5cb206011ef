"""Wall time of the default study, from nothing to figures, in a fresh run directory.

python benchmarks/study_time.py [--recipe fast] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from prunelab.study import run_study
from prunelab.study_config import RECIPES, RunOptions, quick
from prunelab.train import fast_cpu_math


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast", choices=sorted(RECIPES))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    config = quick(RECIPES[args.recipe]) if args.quick else RECIPES[args.recipe]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_study(config, RunOptions(out=Path(out), device="cpu"))
        total = time.perf_counter() - start
    training = sum(r["seconds"] for r in result.dense["history"])
    finetuning = sum(r["seconds"] for r in result.results if r["phase"] == "finetuned")
    cells = len(result.results) // 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, recipe {args.recipe}"
          + (" (quick)" if args.quick else ""))  # fmt: skip
    print("| stage | seconds |")
    print("|---|---:|")
    print(f"| dense training ({config.train.epochs} epochs) | {training:.0f} |")
    print(f"| fine-tuning ({cells} cells x {config.finetune.epochs} epoch) | {finetuning:.0f} |")
    print(f"| everything else (data, pruning, evaluation, figures) | "
          f"{total - training - finetuning:.0f} |")  # fmt: skip
    print(f"| **whole study** | **{total:.0f}** ({total / 60:.1f} min) |")


if __name__ == "__main__":
    main()
