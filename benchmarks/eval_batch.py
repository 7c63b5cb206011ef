"""Evaluation batch size on ResNet-20: 10,000 MNIST-shaped images evaluated in batches of
2000, 500 and 256, timed in one process (why ``train.evaluate`` uses 256).

    python benchmarks/eval_batch.py
"""

from __future__ import annotations

import time

import torch

from prunelab.data import Split
from prunelab.models import ModelConfig, build_model
from prunelab.train import evaluate, fast_cpu_math


def main() -> None:
    fast_cpu_math()
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randn(10_000, 1, 28, 28, generator=generator),
                  torch.randint(0, 10, (10_000,), generator=generator))  # fmt: skip
    model = build_model(ModelConfig("resnet20"), seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| batch | seconds | accuracy |")
    print("|---:|---:|---:|")
    for batch in (2000, 500, 256):
        start = time.perf_counter()
        result = evaluate(model, split, batch_size=batch)
        print(f"| {batch} | {time.perf_counter() - start:.1f} | {result.metric:.4f} |")


if __name__ == "__main__":
    main()
