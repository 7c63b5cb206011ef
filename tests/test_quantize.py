import numpy as np
import pytest

from prunelab.quantize import kmeans_1d


def test_kmeans_1d_reaches_a_lloyd_fixed_point():
    values = np.random.default_rng(0).normal(size=2000)
    centroids, assignment = kmeans_1d(values, 7)
    # every value sits with its nearest centroid, and each centroid is its cluster's mean
    nearest = np.abs(values[:, None] - centroids[None, :]).argmin(1)
    assert np.array_equal(nearest, assignment)
    for c, centroid in enumerate(centroids):
        assert centroid == pytest.approx(values[assignment == c].mean(), abs=1e-5)
    # Lloyd never does worse than its linear start
    start = np.linspace(values.min(), values.max(), 7)
    start_error = (np.abs(values[:, None] - start).min(1) ** 2).sum()
    assert ((values - centroids[assignment]) ** 2).sum() < start_error
