from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prunelab.data import IDX_FILES
from prunelab.idx import write_idx
from prunelab.train import fast_cpu_math

fast_cpu_math()  # as the command line does, before torch starts its threads

PRUNELAB = [sys.executable, "-m", "prunelab.cli"]
FIXTURE_0_1_0 = Path(__file__).parent / "fixtures" / "run-0.1.0"


def run(*args: str) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess."""
    return subprocess.run([*PRUNELAB, *args], capture_output=True, text=True, timeout=300)


def make_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for MNIST: class c lights a 6x6 block at a c-dependent place."""
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row, col = 2 + 6 * (c // 4), 2 + 6 * (c % 4)
        images[i, row : row + 6, col : col + 6] = 255
    return images, labels


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip(("train_images", "train_labels"), make_digits(n_train, rng), strict=True))
    arrays.update(zip(("test_images", "test_labels"), make_digits(n_test, rng), strict=True))
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's dataset cache."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory):
    """One small study through the real command line, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run(
        "study", "--data-dir", str(tiny_data_dir), "--val-size", "100", "--hidden", "32,16",
        "--epochs", "2", "--finetune-epochs", "1", "--ks", "0,0.5,0.9", "--out", str(out),
        "--device", "cpu",
    )  # fmt: skip
    return out, result


def forbid_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make training a network or computing a cell fail, wherever it is called from:
    every prunelab module's reference to ``train`` is replaced, not just one."""
    import prunelab.study
    import prunelab.train

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell or the base model was recomputed")

    for name, module in list(sys.modules.items()):
        if name.startswith("prunelab") and getattr(module, "train", None) is prunelab.train.train:
            monkeypatch.setattr(module, "train", forbidden)
    monkeypatch.setattr(prunelab.study, "_run_cell", forbidden)


def count_cells(monkeypatch: pytest.MonkeyPatch) -> list:
    """A list that grows by one (method name, k) per cell computed from now on."""
    import prunelab.study

    computed, real = [], prunelab.study._run_cell

    def counting(config, base, rewind, method, k, *args):
        computed.append((method.name, k))
        return real(config, base, rewind, method, k, *args)

    monkeypatch.setattr(prunelab.study, "_run_cell", counting)
    return computed
