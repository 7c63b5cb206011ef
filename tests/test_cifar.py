"""CIFAR-10 and CIFAR-100 from python archives the tests write: layout, labels,
restricted unpickling, checksummed downloads, clear errors."""

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from prunelab import data
from prunelab.data import DATASETS, DataError, load_dataset, md5sum
from prunelab.export import load_sparse
from prunelab.models import MODELS, ModelConfig, build_model
from prunelab.study_config import StudyConfig
from tests.conftest import run


def write_cifar(folder, name="cifar10", per_batch=6, n_test=5, seed=0, batches=None):
    """An archive laid out as the real one, with random images; returns it and its data."""
    archive = DATASETS[name].archive
    rng = np.random.default_rng(seed)
    classes = DATASETS[name].classes
    written = {}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive.file
    with tarfile.open(path, "w:gz") as tar:
        for member in (*archive.train, *archive.test):
            n = n_test if member in archive.test else per_batch
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     archive.labels.encode(): rng.integers(0, classes, n).tolist(),
                     b"batch_label": b"a batch"}  # fmt: skip
            batch = (batches or {}).get(member, batch)
            blob = pickle.dumps(batch, protocol=4)
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            written[member] = batch
    return path, written


def test_cifar10_images_are_the_archives_planes_and_labels(tmp_path):
    path, written = write_cifar(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, val_size=4)
    assert ds.num_classes == 10 and ds.source == str(path)
    assert ds.train.x.shape == (26, 3, 32, 32) and len(ds.val) == 4 and len(ds.test) == 5
    test = written["cifar-10-batches-py/test_batch"]
    # pixel (row 3, column 7) of the green plane of test image 2
    assert ds.test.x[2, 1, 3, 7] * 255 == test[b"data"][2, 1024 + 3 * 32 + 7]
    assert ds.test.y.tolist() == test[b"labels"]


def test_cifar100_reads_fine_labels_of_100_classes_from_the_unpacked_folder(tmp_path):
    path, written = write_cifar(tmp_path / "archive", "cifar100", per_batch=30)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    for given in (tmp_path / "unpacked", tmp_path / "unpacked" / "cifar-100-python"):
        ds = load_dataset("cifar100", data_dir=given, val_size=5)
        assert ds.num_classes == 100
        assert ds.test.y.tolist() == written["cifar-100-python/test"][b"fine_labels"]


def test_a_batch_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    member = "cifar-10-batches-py/data_batch_3"
    write_cifar(tmp_path, batches={member: {b"data": Evil(), b"labels": []}})
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR batch.*refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"labels": [1]}, "not a CIFAR batch"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 test images but 1 labels"),
    ],
)
def test_broken_batches_are_one_clear_error(tmp_path, batch, message):
    write_cifar(tmp_path, batches={"cifar-10-batches-py/test_batch": batch})
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", data_dir=tmp_path)


def test_links_and_oversized_members_are_refused(tmp_path, monkeypatch):
    linked = tmp_path / "link"
    linked.mkdir()
    with tarfile.open(linked / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="data_batch_1 is not a plain file"):
        load_dataset("cifar10", data_dir=linked)
    write_cifar(tmp_path / "big")
    monkeypatch.setattr("prunelab.cifar.MAX_MEMBER", 1000)
    with pytest.raises(DataError, match="not a plain file of at most 1,000 bytes"):
        load_dataset("cifar10", data_dir=tmp_path / "big")


def test_missing_members_and_missing_archives_say_what_is_missing(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz"):
        pass
    with pytest.raises(DataError, match="no cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="put cifar-10-python.tar.gz there"):
        load_dataset("cifar10", data_dir=tmp_path / "elsewhere")
    with pytest.raises(DataError, match="downloading is switched off"):
        load_dataset("cifar10", download=False)


def served(tmp_path, monkeypatch, md5=None):
    path, _ = write_cifar(tmp_path / "server")
    spec = DATASETS["cifar10"]
    archive = dataclasses.replace(spec.archive, md5=md5 or md5sum(path))
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(
        spec, url=path.parent.as_uri() + "/", archive=archive))  # fmt: skip
    return DATASETS["cifar10"]


def test_the_download_is_checked_and_cached(tmp_path, monkeypatch):
    spec = served(tmp_path, monkeypatch)
    ds = load_dataset("cifar10", val_size=4)
    assert ds.source == spec.url + "cifar-10-python.tar.gz"
    cached = data.cache_dir() / "cifar10" / "cifar-10-python.tar.gz"
    assert load_dataset("cifar10", val_size=4, download=False).source == str(cached)


def test_a_download_with_the_wrong_checksum_is_not_kept(tmp_path, monkeypatch):
    served(tmp_path, monkeypatch, md5="0" * 32)
    with pytest.raises(DataError, match="does not match the published"):
        load_dataset("cifar10")
    assert not list((data.cache_dir() / "cifar10").iterdir())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_colour_images_of_cifars_size_and_classes(name):
    config = StudyConfig(dataset="cifar100", model=ModelConfig(name)).model
    assert (config.input_shape, config.classes) == ((3, 32, 32), 100)
    model = build_model(config, seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert StudyConfig(model=ModelConfig(name)).model == ModelConfig(name)  # MNIST: no change


def test_a_cifar_study_runs_and_exports_from_the_command_line(tmp_path):
    write_cifar(tmp_path / "data", per_batch=40, n_test=20)
    out = tmp_path / "run"
    result = run("study", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                 "--model", "lenet5", "--val-size", "20", "--epochs", "1", "--ks", "0.5",
                 "--methods", "weight,unit", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cifar10" in (out / "report.md").read_text()
    exported = run("export", str(out), "--method", "unit", "--k", "0.5", "--format", "compact",
                   "-o", str(tmp_path / "small.safetensors"),
                   "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    small, config = load_sparse(tmp_path / "small.safetensors")
    assert config.input_shape == (3, 32, 32) and small[0].in_channels == 3
