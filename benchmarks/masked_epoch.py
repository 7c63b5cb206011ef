"""Cost of holding masks during fine-tuning, as a ratio to a dense epoch.

Times one epoch of Adam on MNIST with the seed's MLP: dense; with prunelab's
masks reapplied after every step (weight and unit pruning at k = 0.9); and with
``torch.nn.utils.prune`` (a forward pre-hook recomputing weight * mask). The
variants are interleaved in rotating order and repeated; the table shows the best
and the median epoch of each (the best is the least disturbed by other load).

    python benchmarks/masked_epoch.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.utils.prune as torch_prune

from prunelab.compact import compact
from prunelab.data import load_dataset
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import PruneMethod, prune
from prunelab.train import TrainConfig, fast_cpu_math, train

K = 0.9


def dense(model):
    return None


def prunelab_weight(model):
    return prune(model, PruneMethod("weight"), K).holder(model)


def prunelab_unit(model):
    return prune(model, PruneMethod("unit"), K).holder(model)


def torch_nn_utils_prune(model):
    for layer in prunable_layers(model).values():
        torch_prune.l1_unstructured(layer, "weight", amount=K)
    return None


def compacted_unit(model):
    prune(model, PruneMethod("unit"), K)
    return compact(model), None


VARIANTS = {
    "dense": dense,
    "prunelab masks, weight k=0.9": prunelab_weight,
    "prunelab masks, unit k=0.9": prunelab_unit,
    "unit k=0.9, compacted (what the study does)": compacted_unit,
    "torch.nn.utils.prune, weight k=0.9": torch_nn_utils_prune,
}


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset("mnist")
    config = TrainConfig(epochs=1, lr=1e-3, lr_schedule="cosine")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for repeat in range(args.repeats):
        # rotate the order so that no variant always runs first (cold caches, clocks)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            setup = VARIANTS[name]
            model = build_model(ModelConfig(), seed=0)
            after_step = setup(model)
            if isinstance(after_step, tuple):  # a replacement model, no masks to hold
                model, after_step = after_step
            start = time.perf_counter()
            train(model, data.train, data.val, config, seed=0, after_step=after_step)
            times[name].append(time.perf_counter() - start)
    best_dense, median_dense = min(times["dense"]), statistics.median(times["dense"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(data.train)} images per epoch, batch {config.batch_size}")  # fmt: skip
    print(f"| variant | best of {args.repeats} (s) | ratio | median (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        print(
            f"| {name} | {best:.2f} | {best / best_dense:.3f} | {median:.2f} | "
            f"{median / median_dense:.3f} |"
        )


if __name__ == "__main__":
    main()
