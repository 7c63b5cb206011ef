"""Data of your own from the command line (--data module:function): a residual
BatchNorm CNN on generated images and a regression MLP go through study, budget,
report and export; each mistake in a data function is one clear error."""

import csv
import json
import re
import subprocess
import textwrap

import pytest
import torch

from prunelab.data import DataError
from prunelab.tasks import TASKS
from prunelab.user_data import load_user_data
from tests.conftest import PRUNELAB
from tests.test_factories import NETS

USER = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import Dataset, DataLoader

    from nets import Residual  # the head defined first, BatchNorm and a skip connection


    def cnn(num_classes=4, in_channels=3):
        return Residual(8, num_classes, in_channels)


    class Stripes(Dataset):
        """3x12x12 images with a bright stripe in one of four places: its class."""
        classes = ["top", "upper", "lower", "bottom"]

        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.labels = torch.randint(0, 4, (n,), generator=g)
            self.noise = torch.rand(n, 3, 12, 12, generator=g) * 0.3

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            x = self.noise[i].clone()
            row = 3 * int(self.labels[i])
            x[:, row : row + 3] += 0.7
            return x, self.labels[i]


    def stripes(n=600):
        return {"train": Stripes(n, 0), "test": DataLoader(Stripes(200, 1), batch_size=50)}


    def mlp(width=32):
        return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width),
                             nn.Tanh(), nn.Linear(width, 1))


    def regression():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1200, 6, generator=g)
        y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3]
        return (x[:800], y[:800]), (x[800:1000], y[800:1000]), (x[1000:], y[1000:])


    def lone_tensor():
        return torch.zeros(4, 2), None, (torch.zeros(4, 2), torch.zeros(4))


    def broken_split():
        return {"train": [1, 2, 3], "test": [4]}


    def two_parts():
        return (torch.zeros(4, 2), torch.zeros(4)), (torch.zeros(4, 2), torch.zeros(4))


    def raises():
        raise RuntimeError("no such file: data.npz")
''')


@pytest.fixture
def project(tmp_path):
    """A user's folder with a module of models and data, where the commands run."""
    (tmp_path / "user.py").write_text(USER)
    (tmp_path / "nets.py").write_text(NETS)

    def prunelab(*args):
        command = [*PRUNELAB, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    return tmp_path, prunelab


QUICK = ("--epochs", "2", "--finetune-epochs", "1", "--batch-size", "50", "--lr", "0.01",
         "--out", "run")  # fmt: skip


def test_a_residual_cnn_on_your_streamed_data_goes_through_study_budget_and_export(project):
    folder, prunelab = project
    study = prunelab("study", "--data", "user:stripes", "--model", "user:cnn", "--val-size",
                     "100", "--methods", "unit,unit:obd", "--ks", "0.5", "--data-workers", "1",
                     *QUICK)  # fmt: skip
    assert study.returncode == 0, study.stderr
    config = json.loads((folder / "run" / "config.json").read_text())
    assert config["dataset"] == "user:stripes" and config["data_source"].startswith("sha256:")
    assert re.search(r"dense test accuracy 0\.\d{4}", study.stdout), study.stdout
    assert "test accuracy" in (folder / "run" / "report.md").read_text()
    with open(folder / "run" / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "unit:obd"]
    assert float(rows[-1]["units_removed"]) == 0.5  # of the channels the trace coupled
    with open(folder / "run" / "layers.csv") as f:
        layers = {row["layer"] for row in csv.DictReader(f)}
    assert layers == {"stem.0", "conv"}  # the head, defined first, is the output layer
    export = prunelab("export", "run", "--method", "unit:obd", "--k", "0.5", "--format",
                      "onnx", "-o", "small.onnx")  # fmt: skip
    assert export.returncode == 0, export.stderr
    exported = float(export.stdout.rsplit("test accuracy ", 1)[1])
    assert abs(exported - float(rows[-1]["test_metric"])) <= 1 / 200  # one of 200 at most
    budget = prunelab("budget", "--data", "user:stripes", "--model", "user:cnn", "--val-size",
                      "100", *QUICK, "--resolution", "0.2")  # fmt: skip
    assert budget.returncode == 0, budget.stderr
    assert "unit (oneshot): " in budget.stdout


def test_a_regression_mlp_is_measured_in_r2_and_its_budget_in_r2_units(project):
    folder, prunelab = project
    study = prunelab("study", "--data", "user:regression", "--model", "user:mlp",
                     "--task", "regression", "--methods", "weight,weight:obs", "--ks", "0.5,0.9",
                     *QUICK, "--epochs", "20")  # fmt: skip
    assert study.returncode == 0, study.stderr
    assert re.search(r"dense test r2 -?\d+\.\d{4}", study.stdout), study.stdout
    answers = json.loads((folder / "run" / "answers.json").read_text())
    assert {a["metric"] for a in answers} == {"r2"}
    assert "is within 0.01 of the dense model" in (folder / "run" / "report.md").read_text()
    assert (folder / "run" / "figures" / "r2_vs_k.png").exists()
    export = prunelab("export", "run", "--method", "weight:obs", "--k", "0.5", "-o", "w.st")
    assert export.returncode == 0 and "test r2 " in export.stdout, export.stderr
    budget = prunelab("budget", "--data", "user:regression", "--model", "user:mlp",
                      "--task", "regression", "--structure", "weight", "--max-drop", "0.05",
                      *QUICK, "--epochs", "20", "--resolution", "0.2")  # fmt: skip
    assert budget.returncode == 0, budget.stderr
    assert "r2" in budget.stdout
    lottery = prunelab("study", "--data", "user:regression", "--model", "user:mlp", "--task",
                       "regression", "--methods", "weight", "--ks", "0.5", "--schedule",
                       "lottery", "--rounds", "2", "--rewind-steps", "5", *QUICK,
                       "--out", "lottery")  # fmt: skip
    assert lottery.returncode == 0, lottery.stderr
    with open(folder / "lottery" / "results.csv") as f:
        phases = {row["phase"] for row in csv.DictReader(f) if row["schedule"] == "lottery"}
    assert phases == {"oneshot", "finetuned", "reinit"}


@pytest.mark.parametrize(
    "function, message",
    [
        ("user:absent", "has no function 'absent'"),
        ("nowhere:data", "no module 'nowhere' importable from here"),
        ("user:raises", r"calling it with \{\} fails: RuntimeError: no such file: data.npz"),
        ("user:two_parts", r"returned tuple; give a dict of 'train', 'val' and 'test'"),
        ("user:broken_split", "the train split is a list; give a torch Dataset"),
        ("user:lone_tensor", "the train split is a Tensor; give a torch Dataset"),
        ("user:regression", "integer labels, got float targets"),
    ],
)
def test_each_mistake_in_a_data_function_is_one_clear_error(project, function, message):
    folder, prunelab = project
    result = prunelab("study", "--data", function, "--model", "user:mlp", *QUICK)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("prunelab") and re.search(message, line), result.stderr
    assert not (folder / "run" / "config.json").exists()  # the corrected command may run there


def test_a_mistake_on_the_command_line_is_one_line_not_the_usage(project):
    _, prunelab = project
    result = prunelab("study", "--data", "user:regression", "--data-kwargs", "{n: 3}")
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "expected a JSON object" in line
    assert line.endswith("(see prunelab study --help)")


def test_a_missing_validation_split_is_carved_by_the_seeded_rule(project, monkeypatch):
    folder, _ = project
    monkeypatch.chdir(folder)
    first = load_user_data("user:regression", None, {}, TASKS["regression"], val_size=50,
                           train_limit=None)  # fmt: skip
    assert len(first.val) == 200  # returned: kept
    with pytest.raises(DataError, match="cannot carve 5000 validation samples from 600"):
        load_user_data("user:stripes", None, {}, TASKS["classification"], val_size=5000,
                       train_limit=None)  # fmt: skip
    carved = [load_user_data("user:stripes", None, {"n": 300}, TASKS["classification"],
                             val_size=60, train_limit=None) for _ in range(2)]  # fmt: skip
    assert len(carved[0].val) == 60 and len(carved[0].train) == 240
    assert carved[0].num_classes == 4
    for a, b in zip(carved[0].val.batches(60), carved[1].val.batches(60), strict=True):
        assert torch.equal(a[0], b[0])
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:60]
    labels = torch.cat([y for _, y in carved[0].val.batches(60)])
    full = carved[0].val.source.dataset.labels
    assert torch.equal(labels, full[order])


def test_a_changed_data_function_is_refused_by_its_run(project):
    folder, prunelab = project
    args = ("study", "--data", "user:regression", "--model", "user:mlp", "--task",
            "regression", "--methods", "weight", "--ks", "0.5", *QUICK)  # fmt: skip
    assert prunelab(*args).returncode == 0
    (folder / "user.py").write_text(USER + "\n# edited\n")
    again = prunelab(*args)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "a different data_source" in again.stderr, again.stderr
    export = prunelab("export", "run", "--method", "weight", "--k", "0.5", "-o", "w.st")
    assert export.returncode == 2
    assert "user.py changed since this run was configured" in export.stderr
