"""What streaming costs: one epoch of the seed's MLP on 55,000 MNIST-shaped images held as
tensors (the built-in datasets' path), against the same images streamed from a
``TensorDataset``, from a map-style ``Dataset`` read one sample at a time, and from a
``DataLoader`` with two worker processes, all timed in one process (the best of two
epochs each, after a warm-up).

    python benchmarks/streaming.py
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunelab.models import ModelConfig, build_model
from prunelab.splits import Split, StreamSplit
from prunelab.train import TrainConfig, fast_cpu_math, train


class Samples(Dataset):
    """The tensors, one sample per ``__getitem__``, as most users' datasets are."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def seconds(split, val: Split) -> float:
    model = build_model(ModelConfig(), seed=0)
    start = time.perf_counter()
    train(model, split, val, TrainConfig(epochs=1), seed=0)
    return time.perf_counter() - start


def main() -> None:
    fast_cpu_math()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(55_000, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (55_000,), generator=generator)
    val = Split(x[:5000], y[:5000])
    forms = {
        "tensors (in memory)": Split(x, y),
        "TensorDataset, streamed": StreamSplit(TensorDataset(x, y)),
        "Dataset of samples, streamed": StreamSplit(Samples(x, y)),
        "DataLoader, 2 workers": StreamSplit(
            DataLoader(Samples(x, y), batch_size=128, shuffle=True, num_workers=2)
        ),
    }
    seconds(Split(x[:5000], y[:5000]), val)  # warm-up: torch's thread pool and allocator
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| data | seconds per epoch | vs in memory |")
    print("|---|---:|---:|")
    baseline = None
    for name, split in forms.items():
        took = min(seconds(split, val) for _ in range(2))
        baseline = baseline or took
        print(f"| {name} | {took:.2f} | {took / baseline:.2f}x |")


if __name__ == "__main__":
    main()
