"""Weight sharing (Deep Compression, Han, Mao and Dally 2016).

The kept weights of a layer share at most 2**bits - 1 values, found by a 1-D
k-means, so that a file stores a small codebook and a code of ``bits`` bits per
weight (``export``).
"""

from __future__ import annotations

import numpy as np


def kmeans_1d(
    values: np.ndarray, clusters: int, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, started from centroids spread linearly over the
    values' range (Deep Compression found this start best for weights).

    Returns (centroids, index of each value's centroid). Deterministic.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    centroids = np.linspace(values.min(), values.max(), clusters)
    assignment = None
    for _ in range(iterations):
        order = np.argsort(centroids)
        centroids = centroids[order]
        # nearest centroid in 1-D: compare with the midpoints between sorted centroids
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        sums = np.bincount(assignment, weights=values, minlength=clusters)
        sizes = np.bincount(assignment, minlength=clusters)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled]  # an empty cluster keeps its centroid
    return centroids.astype(np.float32), assignment


def share_values(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, uint8 codes) of one layer's values: code 0 is the exact zero (pruned
    weights, gap fillers), codes 1 to 2**bits - 1 the centroids of the rest."""
    values = np.asarray(values, dtype=np.float32)
    real = values != 0
    centroids, assignment = kmeans_1d(values[real], 2**bits - 1)
    codes = np.zeros(len(values), dtype=np.uint8)
    codes[real] = assignment + 1
    return np.r_[np.float32(0), centroids], codes
