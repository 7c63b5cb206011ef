"""Small unsigned integers stored at the width they need, one after the other in bytes:
the places of N:M weights (``nm_format``) and the codes of shared values (``export``)."""

from __future__ import annotations

import numpy as np


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Each value's low ``bits`` bits (1 to 8), in order, as bytes."""
    low = np.unpackbits(np.asarray(values, dtype=np.uint8).reshape(-1, 1), axis=1)[:, 8 - bits :]
    return np.packbits(low.reshape(-1))


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` values of ``bits`` bits each, as uint8; a ValueError where
    ``packed`` holds fewer."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8))
    if stream.size < count * bits:
        raise ValueError(f"{count} values of {bits} bits need {count * bits} bits, the data "
                         f"holds {stream.size}")  # fmt: skip
    low = stream[: count * bits].reshape(count, bits)
    return np.packbits(np.pad(low, ((0, 0), (8 - bits, 0))), axis=1).reshape(-1)
