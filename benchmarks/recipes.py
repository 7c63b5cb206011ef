"""Seconds per training epoch of each recipe, and what a whole study costs with it.

python benchmarks/recipes.py
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from prunelab.data import load_dataset
from prunelab.models import build_model
from prunelab.study_config import RECIPES
from prunelab.train import fast_cpu_math, train


def main() -> None:
    fast_cpu_math()
    data = load_dataset("mnist")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| recipe | optimizer, batch | s / epoch | dense training | study (x20 cells) |")
    print("|---|---|---:|---:|---:|")
    for name, config in RECIPES.items():
        model = build_model(config.model, seed=0)
        one_epoch = replace(config.train, epochs=1)
        start = time.perf_counter()
        train(model, data.train, data.val, one_epoch, seed=0)
        epoch = time.perf_counter() - start
        cells = len(config.methods) * len(config.ks)
        dense = epoch * config.train.epochs
        study = dense + epoch * config.finetune.epochs * cells
        optimizer = f"{config.train.optimizer}, {config.train.batch_size}"
        dense_text = f"{dense / 60:.1f} min ({config.train.epochs} epochs)"
        print(f"| {name} | {optimizer} | {epoch:.1f} | {dense_text} | {study / 60:.1f} min |")


if __name__ == "__main__":
    main()
