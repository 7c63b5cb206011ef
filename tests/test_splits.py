"""Streamed splits: a torch Dataset or DataLoader is read batch by batch, in the same
order from the same seed, and a dataset far larger than memory trains in flat memory."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunelab.splits import Split, StreamSplit
from prunelab.train import TrainConfig, evaluate, train


class Generated(Dataset):
    """``n`` samples of ``width`` features computed from their index (nothing stored):
    the label is which of ten stripes the first feature falls in."""

    def __init__(self, n: int, width: int):
        self.n, self.width = n, width
        self.frequencies = torch.linspace(0.001, 0.5, width)

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]):  # one batch at a time: fast
        x = torch.sin(torch.tensor(indices, dtype=torch.float32)[:, None] * self.frequencies)
        return x, ((x[:, 0] + 1) * 5).long().clamp(0, 9)

    def __getitem__(self, index: int):
        x, y = self.__getitems__([index])
        return x[0], y[0]


def collate(batch):
    return batch  # __getitems__ gives the batch already


def resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_two_million_generated_samples_train_one_epoch_in_flat_memory():
    """Held as one tensor they would take 2e6 x 256 x 4 bytes = 2 GB."""
    data = Generated(2_000_000, 256)
    loader = DataLoader(data, batch_size=2048, shuffle=True, collate_fn=collate)
    model = nn.Linear(256, 10)
    peak, start = [0], resident_bytes()

    def watch(_model):
        peak[0] = max(peak[0], resident_bytes())

    val = StreamSplit(DataLoader(Generated(4096, 256), batch_size=1024, collate_fn=collate))
    records = train(model, StreamSplit(loader), val, TrainConfig(epochs=1, lr=1e-2), seed=0,
                    after_step=watch)  # fmt: skip
    assert len(records) == 1 and records[0].val_metric > 0.1
    assert peak[0] - start < 256 * 2**20


def test_a_dataset_streams_in_the_order_and_batches_of_its_tensors():
    """Batched and shuffled here from the same generator, a TensorDataset gives exactly
    the batches the in-memory split gives."""
    x, y = torch.randn(50, 3), torch.randint(0, 4, (50,))
    held, streamed = Split(x, y), StreamSplit(TensorDataset(x, y))
    for generator_seed in (None, 7):

        def batches(split, seed=generator_seed):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            return list(split.batches(8, generator))

        for (xa, ya), (xb, yb) in zip(batches(held), batches(streamed), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(streamed) == 50 and torch.equal(streamed.head(3), x[:3])
    assert [len(b[1]) for b in streamed.sample(20, seed=1, batch_size=8)] == [8, 8, 4]
    torch.testing.assert_close(
        torch.cat([b[0] for b in streamed.sample(20, seed=1)]),
        torch.cat([b[0] for b in held.sample(20, seed=1)]),
    )


def test_training_on_a_stream_equals_training_on_the_same_tensors():
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    config = TrainConfig(epochs=2, batch_size=16)
    models = []
    for split in (Split(x, y), StreamSplit(TensorDataset(x, y))):
        torch.manual_seed(0)
        models.append(nn.Linear(5, 3))
        train(models[-1], split, split, config, seed=3)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_train_and_evaluate_take_loaders_and_lists_of_batches_as_they_are():
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    loader, batches = DataLoader(TensorDataset(x, y), batch_size=16), list(Split(x, y).batches(16))
    model = nn.Linear(5, 3)
    (record,) = train(model, loader, batches, TrainConfig(epochs=1), seed=0)
    assert record.val_metric == evaluate(model, (x, y)).metric == evaluate(model, batches).metric
    with pytest.raises(TypeError, match="cannot read a str as data"):
        evaluate(model, "data.npz")


def test_a_loader_of_anything_but_pairs_is_one_clear_error():
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(ValueError, match=r"\(input, target\) pairs .* got a list of 1"):
        evaluate(nn.Linear(2, 2), StreamSplit(loader))
