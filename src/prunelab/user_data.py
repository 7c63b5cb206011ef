"""Data of your own from the command line: ``--data package.module:function`` or
``--data path/to/file.py:function``, called with ``--data-kwargs`` (JSON).

The function returns the splits, as a dict with keys ``train``, ``test`` and
optionally ``val``, or a tuple (train, val, test) whose val may be None. Each split is
a torch ``Dataset``, a ``DataLoader`` or a pair of tensors (inputs, targets): tensors
(and a ``TensorDataset`` of two) are held in memory, the rest streamed batch by batch.
A missing validation split is carved from the training split by the seeded rule the
built-in datasets use (``--val-size`` of it). Classification reads the number of
classes from the training dataset's ``classes`` (a list, as torchvision's) or
``num_classes``, or, for tensors, from the largest label.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from prunelab import factories
from prunelab.data import DataError, Dataset
from prunelab.splits import AnySplit, Split, StreamSplit
from prunelab.tasks import Task

FLAG = "--data"


def load_user_data(
    name: str, source: str | None, kwargs: Mapping[str, Any], task: Task, *,
    val_size: int, train_limit: int | None, split_seed: int = 0, workers: int = 0,
) -> Dataset:  # fmt: skip
    """Call the data function (if its file is still ``source``) and make its splits; a
    ``Dataset`` is loaded by ``workers`` processes."""
    factories.check_unchanged(name, source, FLAG)
    function = factories.load(name, FLAG)
    try:
        returned = function(**kwargs)
    except Exception as err:
        raise DataError(f"{FLAG} {name!r}: calling it with {dict(kwargs)} fails: "
                        f"{type(err).__name__}: {err}") from err  # fmt: skip
    parts = _parts(returned, name).items()
    train, val, test = (_split(part, key, name, workers) for key, part in parts)
    if val is None:
        train, val = _carve(train, val_size, split_seed, name)
    if train_limit is not None:
        train = _first(train, train_limit, name)
    held = all(isinstance(split, Split) for split in (train, val, test))  # hashed if so
    data = Dataset(name=name, source=str(factories.source_file(name, FLAG)), train=train,
                   val=val, test=test, num_classes=None, task=task,
                   digest=None if held else source)  # fmt: skip
    return _checked(data, name)


def _parts(returned: Any, name: str) -> dict[str, Any]:
    if isinstance(returned, Mapping):
        unknown = set(returned) - {"train", "val", "test"}
        if unknown or not {"train", "test"} <= set(returned):
            raise DataError(f"{FLAG} {name!r} returned a dict with keys {sorted(returned)}; "
                            "give 'train', 'test' and optionally 'val'")  # fmt: skip
        return {key: returned.get(key) for key in ("train", "val", "test")}
    if isinstance(returned, (tuple, list)) and len(returned) == 3:
        return dict(zip(("train", "val", "test"), returned, strict=True))
    raise DataError(f"{FLAG} {name!r} returned {type(returned).__name__}; give a dict of "
                    "'train', 'val' and 'test', or a tuple (train, val, test)")  # fmt: skip


def _split(part: Any, key: str, name: str, workers: int) -> AnySplit | None:
    """A returned split as the training loop reads it."""
    if part is None:
        if key != "val":
            raise DataError(f"{FLAG} {name!r} gave no {key} split")
        return None
    if isinstance(part, TensorDataset) and len(part.tensors) == 2:
        part = part.tensors
    if isinstance(part, (tuple, list)) and len(part) == 2 and \
            all(isinstance(t, torch.Tensor) for t in part):  # fmt: skip
        x, y = part
        if len(x) != len(y) or not len(x):
            raise DataError(f"{FLAG} {name!r}: the {key} split has {len(x)} inputs and "
                            f"{len(y)} targets")  # fmt: skip
        return Split(x, y)
    if isinstance(part, (TorchDataset, DataLoader)):
        return StreamSplit(part, workers=workers)
    raise DataError(f"{FLAG} {name!r}: the {key} split is a {type(part).__name__}; give "
                    "a torch Dataset, a DataLoader or a pair of tensors")  # fmt: skip


def _subset(split: StreamSplit, indices: list[int], name: str) -> StreamSplit:
    """Those samples of the split, read as it reads its own (``StreamSplit.like_me``)."""
    if not split.indexable:
        raise DataError(f"{FLAG} {name!r}: samples cannot be picked from an iterable "
                        "dataset (for a validation split or --train-limit); return a val "
                        "split, and limit the data yourself")  # fmt: skip
    return split.like_me(Subset(split.dataset, indices))


def _carve(train: AnySplit, val_size: int, seed: int, name: str) -> tuple[AnySplit, AnySplit]:
    """Validation: ``val_size`` training samples in the seeded order; training the rest."""
    n = len(train)
    if not 0 < val_size < n:
        raise DataError(f"{FLAG} {name!r}: cannot carve {val_size} validation samples from "
                        f"{n} training samples; set --val-size or return a val split")  # fmt: skip
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if isinstance(train, Split):
        return Split(train.x[train_idx], train.y[train_idx]), Split(
            *(train.x[val_idx], train.y[val_idx])
        )
    return _subset(train, train_idx.tolist(), name), _subset(train, val_idx.tolist(), name)


def _first(train: AnySplit, limit: int, name: str) -> AnySplit:
    if isinstance(train, Split):
        return Split(train.x[:limit], train.y[:limit])
    return _subset(train, list(range(min(limit, len(train)))), name)


def _checked(data: Dataset, name: str) -> Dataset:
    """The data with its number of classes (classification) or outputs per sample
    (regression), after a first batch of each split is read."""
    first = {}
    for key in ("train", "val", "test"):
        try:
            first[key] = next(iter(getattr(data, key).batches(2)))
        except StopIteration:
            raise DataError(f"{FLAG} {name!r}: the {key} split is empty") from None
        except Exception as err:
            raise DataError(f"{FLAG} {name!r}: reading the {key} split fails: "
                            f"{type(err).__name__}: {err}") from err  # fmt: skip
    _, y = first["train"]
    if data.task.name == "classification":
        if y.is_floating_point():
            raise DataError(f"{FLAG} {name!r}: classification needs integer labels, got float "
                            "targets (for numbers to predict, use --task regression)")  # fmt: skip
        outputs = _classes(data, name)
    elif data.task.name.startswith("regression"):
        outputs = y[0].numel()
    else:
        outputs = None
    return replace(data, num_classes=outputs)


def _classes(data: Dataset, name: str) -> int:
    dataset = getattr(data.train, "dataset", None)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    for attribute in ("classes", "num_classes"):
        value = getattr(dataset, attribute, None)
        if value is None:
            continue
        try:
            return operator.index(value) if not hasattr(value, "__len__") else len(value)
        except TypeError:
            raise DataError(f"{FLAG} {name!r}: the training dataset's {attribute} is a "
                            f"{type(value).__name__}; give a number or a list of class "
                            "names") from None  # fmt: skip
    splits = [data.train, data.val, data.test]
    if all(isinstance(s, Split) for s in splits):
        return int(max(int(s.y.max()) for s in splits)) + 1
    raise DataError(f"{FLAG} {name!r}: say how many classes there are: give the training "
                    "Dataset a `classes` list or a `num_classes` number")  # fmt: skip
