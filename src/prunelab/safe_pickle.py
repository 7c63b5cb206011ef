"""Pickles of numpy arrays, read without letting the file run code: the unpickler loads
plain arrays and nothing else (MNIST's and CIFAR's python archives are such pickles)."""

from __future__ import annotations

import pickle

import numpy as np


def _reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays may be unpickled")
    return np.ndarray.__new__(cls, shape, dtype)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: no other global can be loaded."""

    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return self.ALLOWED[(module, name)]
