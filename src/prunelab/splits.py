"""A split of a dataset as training, evaluation and calibration read it: batch by batch.

``Split`` holds its inputs and targets as two tensors (the built-in datasets: fast,
and indexed on the device). ``StreamSplit`` reads a torch ``Dataset``, a
``DataLoader`` or any re-iterable of (input, target) batches as it goes, so a dataset
larger than memory trains in flat memory. Both give the same four things:
``len``, ``batches``, ``head`` and ``sample``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset
from torch.utils.data import Dataset as TorchDataset

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # inputs [N, ...], e.g. float32 images [N, C, H, W] in [0, 1]
    y: torch.Tensor  # targets [N, ...]: class indices, numbers, tokens

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Consecutive batches, or a random order drawn from ``generator`` when given."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], self.y[idx]

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` inputs: examples for tracing and checks."""
        return self.x[:n]

    def sample(self, size: int, seed: int, batch_size: int = 256) -> list[Batch]:
        """``size`` examples in a seeded random order, as batches (calibration data)."""
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=generator)[:size].to(self.x.device)
        return [
            (self.x[idx[i : i + batch_size]], self.y[idx[i : i + batch_size]])
            for i in range(0, len(idx), batch_size)
        ]

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


class StreamSplit:
    """A split read batch by batch, moved to ``device`` as it comes, never held whole.

    ``source`` is a torch ``Dataset`` (batched here, shuffled by the training's
    generator, loaded by ``workers`` processes with ``collate_fn``, pinned for a GPU),
    a ``DataLoader`` (used as it is: its own batch size, order and workers), or a list
    of (input, target) batches. ``batch_size``, where given, replaces the batch size
    training and evaluation ask a ``Dataset`` for (a subset carved from your loader
    keeps its batch size).
    """

    def __init__(
        self, source: Iterable, device: torch.device | str = "cpu", workers: int = 0, *,
        batch_size: int | None = None, collate_fn: Callable | None = None,
    ):  # fmt: skip
        self.source, self.device, self.workers = source, torch.device(device), workers
        self.batch_size, self.collate_fn = batch_size, collate_fn
        self._length: int | None = None

    @property
    def dataset(self) -> TorchDataset | None:
        """The ``Dataset`` read: the source, or the source loader's (None: a list)."""
        source = self.source
        dataset = source.dataset if isinstance(source, DataLoader) else source
        return dataset if isinstance(dataset, TorchDataset) else None

    @property
    def indexable(self) -> bool:
        """Whether samples can be picked by index (a map-style ``Dataset``)."""
        return self.dataset is not None and not isinstance(self.dataset, IterableDataset)

    def __len__(self) -> int:
        """Samples, counted once by reading them where nothing says how many there are."""
        if self._length is None:
            source = self.source
            if isinstance(source, DataLoader) and self.indexable:
                sampler = getattr(source.batch_sampler, "sampler", source.sampler)
                self._length = len(sampler) if hasattr(sampler, "__len__") else None
            elif self.indexable:
                self._length = len(self.dataset)
            if self._length is None:
                self._length = sum(len(y) for _, y in self.batches(1024))
        return self._length

    def like_me(self, dataset: TorchDataset) -> StreamSplit:
        """``dataset`` (a subset of mine) read as I read mine: the same batch size,
        collate function and workers, shuffled from the run's generator."""
        source = self.source
        if isinstance(source, DataLoader):
            size, collate = source.batch_size, source.collate_fn
            return StreamSplit(dataset, self.device, source.num_workers, batch_size=size,
                               collate_fn=collate)  # fmt: skip
        return StreamSplit(dataset, self.device, self.workers, batch_size=self.batch_size,
                           collate_fn=self.collate_fn)  # fmt: skip

    def _loader(self, batch_size: int, generator: torch.Generator | None) -> Iterable:
        if not isinstance(self.source, TorchDataset):
            return self.source
        order = None  # the order an in-memory split draws from the same generator
        if generator is not None and self.indexable:
            order = torch.randperm(len(self.source), generator=generator).tolist()
        pin = self.device.type == "cuda"
        return DataLoader(self.source, batch_size=self.batch_size or batch_size, sampler=order,
                          num_workers=self.workers, pin_memory=pin,
                          collate_fn=self.collate_fn)  # fmt: skip

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        for batch in self._loader(batch_size, generator):
            x, y = _pair(batch)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def head(self, n: int) -> torch.Tensor:
        for x, _ in self.batches(n):
            return x[:n]
        raise ValueError("the data gave no batches")

    def sample(self, size: int, seed: int, batch_size: int = 256) -> list[Batch]:
        """``size`` examples in a seeded random order where the data can be indexed (in
        batches as I make them), my first ``size`` otherwise."""
        if self.indexable:
            generator = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(self.dataset), generator=generator)[:size].tolist()
            return list(self.like_me(Subset(self.dataset, idx)).batches(batch_size))
        taken, count = [], 0
        for x, y in self.batches(batch_size):
            taken.append((x[: size - count], y[: size - count]))
            count += len(taken[-1][1])
            if count >= size:
                break
        return taken

    def to(self, device: torch.device) -> StreamSplit:
        return StreamSplit(self.source, device, self.workers, batch_size=self.batch_size,
                           collate_fn=self.collate_fn)  # fmt: skip


def as_split(data: Any) -> AnySplit:
    """A split, from a split, a pair of tensors (inputs, targets), or anything a
    ``StreamSplit`` reads: a torch ``Dataset``, a ``DataLoader``, a list of batches."""
    if isinstance(data, (Split, StreamSplit)):
        return data
    tensors = isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data)
    if tensors and len(data) == 2:
        return Split(*data)
    if isinstance(data, (TorchDataset, DataLoader, list)):
        return StreamSplit(data)
    raise TypeError(f"cannot read a {type(data).__name__} as data: give a torch Dataset, "
                    "a DataLoader, a list of (input, target) batches or two tensors")  # fmt: skip


def _pair(batch) -> Batch:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"input", "target"} <= batch.keys():
        return batch["input"], batch["target"]
    raise ValueError(
        "the data must give (input, target) pairs or {'input': ..., 'target': ...}; got a "
        f"{type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


AnySplit = Split | StreamSplit
