import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunelab.data import load_dataset
from prunelab.export import load_sparse, save_sparse
from prunelab.models import ModelConfig, build_model
from prunelab.prune import PruneMethod, prune
from prunelab.quantize import (
    kmeans_1d,
    share_values,
    share_weights_,
    shared_weights,
    train_codebooks,
    unshare_weights_,
)
from prunelab.train import TrainConfig

BITS = 3  # 7 shared values per layer
CONFIG = ModelConfig(hidden=(32,))


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


def test_values_that_already_fit_a_codebook_are_kept_exactly():
    # k-means from a linear start would merge the five small values into one centroid
    values = np.array([0, -1, 0.01, 0.02, 0, 0.03, 0.04, 0.05, 1, 0.02], dtype=np.float32)
    codebook, codes = share_values(values, BITS)
    assert np.array_equal(codebook[codes], values)
    assert len(codebook) == 2**BITS and codebook[0] == 0 and (codes[values == 0] == 0).all()
    codebook, codes = share_values(values, 2)  # 3 centroids for 7 values: k-means
    assert len(np.unique(codebook[codes][values != 0])) <= 3


def pruned_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = build_model(CONFIG, seed=0).to(dtype)
    prune(model, PruneMethod("weight"), 0.8, include_last=True)
    return model


def test_a_centroid_gradient_is_the_sum_of_its_weights_gradients():
    """One backward pass through the shared weights against the same network with plain
    weights holding the same values: each centroid's gradient is the sum of the
    gradients of the weights that read it (float64, so only summation order differs)."""
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (64,))
    shared = pruned_model(torch.float64)
    plain = copy.deepcopy(shared)
    codebooks = share_weights_(shared, BITS)
    owners = {name: shared.get_submodule(name.rpartition(".")[0]) for name in codebooks}
    with torch.no_grad():
        for name, module, attribute in shared_weights(plain):
            getattr(module, attribute).copy_(getattr(owners[name], attribute))  # shared values
    F.cross_entropy(shared(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    for name, module, attribute in shared_weights(plain):
        codes = getattr(owners[name].parametrizations, attribute)[0].codes
        weight_grad = getattr(module, attribute).grad
        expected = torch.stack([weight_grad[codes == c].sum() for c in range(1, 2**BITS)])
        assert codebooks[name].grad.abs().sum() > 0
        torch.testing.assert_close(codebooks[name].grad, expected, rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pruned network, the same after k-means alone, and after training its codebooks."""
    from .conftest import write_dataset

    data = load_dataset("mnist", data_dir=write_dataset(tmp_path_factory.mktemp("d")),
                        val_size=100)  # fmt: skip
    model = pruned_model()
    kmeans, tuned = copy.deepcopy(model), copy.deepcopy(model)
    share_weights_(kmeans, BITS)
    unshare_weights_(kmeans)
    train_codebooks(tuned, BITS, data.train, data.val, TrainConfig(epochs=1, batch_size=50),
                    seed=0)  # fmt: skip
    return model, kmeans, tuned


def test_trained_codebooks_keep_the_mask_and_at_most_2_bits_minus_1_values(trained):
    model, kmeans, tuned = trained
    assert sorted(tuned.state_dict()) == sorted(model.state_dict())  # plain parameters again
    for name, value in tuned.state_dict().items():
        if value.dim() >= 2:
            assert torch.equal(value != 0, model.state_dict()[name] != 0), name
            assert len(value[value != 0].unique()) <= 2**BITS - 1
            assert not torch.equal(value, kmeans.state_dict()[name])  # the centroids moved
        else:
            assert not torch.equal(value, model.state_dict()[name])  # biases train too


@pytest.mark.parametrize("entropy", [None, "huffman"])
def test_the_export_holds_exactly_the_trained_centroids(trained, tmp_path, entropy):
    _, _, tuned = trained
    save_sparse(tuned, CONFIG, tmp_path / "q.st", codebook_bits=BITS, entropy=entropy)
    loaded, _ = load_sparse(tmp_path / "q.st")
    for name, value in tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
