"""Models of your own from the command line: --model module:function and
file.py:function, their keyword arguments, the fingerprint of their code, and one clear
error for each kind of mistake."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

from prunelab.factories import FactoryError
from prunelab.models import ModelConfig, build_model
from tests.conftest import PRUNELAB

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Residual(nn.Module):
        """A head defined before its body, BatchNorm and a skip connection."""

        def __init__(self, width=8, num_classes=10, in_channels=1):
            super().__init__()
            self.head = nn.Linear(width, num_classes)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1),
                                      nn.BatchNorm2d(width), nn.ReLU())
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.norm = nn.BatchNorm2d(width)

        def forward(self, x):
            x = self.stem(x)
            return self.head(torch.relu(x + self.norm(self.conv(x))).mean((2, 3)))

    def residual(width=8, num_classes=10, in_channels=1):
        return Residual(width, num_classes, in_channels)

    def text():
        return "not a module"

    def colour(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))

    def eleven():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 11))
''')


@pytest.fixture
def project(tmp_path, tiny_data_dir):
    """A user's folder with a module of models, where the commands run."""
    (tmp_path / "nets.py").write_text(NETS)

    def prunelab(*args):
        command = [*PRUNELAB, *args, "--data-dir", str(tiny_data_dir)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    return tmp_path, prunelab


def study(prunelab, model, out, *more):
    return prunelab("study", "--model", model, "--val-size", "50", "--epochs", "1",
                    "--ks", "0.5", "--methods", "weight,unit", "--out", out, *more)  # fmt: skip


def test_a_model_of_your_own_runs_the_study_and_exports(project):
    folder, prunelab = project
    form = "nets.py:residual"
    result = study(prunelab, form, "run", "--model-kwargs", '{"width": 6}')
    assert result.returncode == 0, result.stderr
    model = json.loads((folder / "run" / "config.json").read_text())["model"]
    assert model["kwargs"] == {"width": 6} and model["source"].startswith("sha256:")
    exported = prunelab("export", "run", "--method", "unit", "--k", "0.5", "--format", "onnx",
                        "-o", "unit.onnx")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    sparse = prunelab("export", "run", "--method", "weight", "--k", "0.5", "-o", "w.safetensors")
    assert sparse.returncode == 0, sparse.stderr
    compact = prunelab("export", "run", "--method", "unit", "--k", "0.5", "--format", "compact",
                       "-o", "c.safetensors")  # fmt: skip
    assert compact.returncode == 2 and "export it as sparse" in compact.stderr
    # changed code: the run refuses to resume, the saved model to load
    (folder / "nets.py").write_text(NETS + "\n# changed\n")
    again = study(prunelab, form, "run", "--model-kwargs", '{"width": 6}')
    assert again.returncode != 0 and "different model" in again.stderr
    refused = prunelab("export", "run", "--method", "weight", "--k", "0.5", "-o", "w2.st")
    assert refused.returncode != 0 and "nets.py changed since" in refused.stderr


@pytest.mark.parametrize(
    "model, more, message",
    [
        ("nowhere:residual", (), "no module 'nowhere' importable from here"),
        ("nets:absent", (), "has no function 'absent'"),
        ("nets:text", (), "returned str, not a torch.nn.Module"),
        ("nets:residual", ("--model-kwargs", '{"depth": 3}'), "unexpected keyword argument"),
        ("nets:residual", ("--model-kwargs", "width=3"), "expected a JSON object"),
        ("nets:residual", ("--hidden", "4"), "takes --model-kwargs, not --hidden"),
        ("nets:colour", (), r"fails on a batch of mnist inputs \[2, 1, 28, 28\]"),
        ("nets:eleven", (), r"gives \[2, 11\] .* expected \[2, 10\], one score per class"),
    ],
)
def test_each_mistake_is_one_clear_error(project, model, more, message):
    _, prunelab = project
    result = study(prunelab, model, "run", *more)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prunelab") and re.search(message, last), result.stderr


def test_a_module_is_found_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    config = ModelConfig("nets:residual", kwargs={"width": 4})
    assert config.name == "nets:residual" and config.source.startswith("sha256:")
    assert build_model(config, num_classes=3).head.out_features == 3
    sys.modules.pop("nets", None)  # (imported here: no other test sees it)


def test_the_python_api_builds_from_a_file(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    config = ModelConfig(f"{tmp_path / 'nets.py'}:residual", kwargs={"width": 5})
    model = build_model(config, num_classes=3)
    assert model.head.out_features == 3 and model.head.in_features == 5
    (tmp_path / "nets.py").write_text(NETS + "\n")
    with pytest.raises(FactoryError, match="changed since"):
        build_model(config)
    with pytest.raises(ValueError, match="takes --hidden, not --model-kwargs"):
        ModelConfig("mlp", kwargs={"width": 5})


def test_keyword_arguments_come_from_a_sweep_files_table(tmp_path):
    from prunelab.study_config import every_setting
    from prunelab.sweep import read_sweep

    path = tmp_path / "sweep.toml"
    path.write_text('model = "nets:residual"\nmodel-kwargs = {width = 6, name = "a"}\n')
    values = read_sweep(path, every_setting())
    assert values["model.kwargs"] == {"width": 6, "name": "a"}
    path.write_text("model-kwargs = 6\n")
    with pytest.raises(ValueError, match="model-kwargs: expected a JSON object"):
        read_sweep(path, every_setting())


def test_a_chain_of_your_own_cannot_be_rebuilt_compacted_from_its_config(tmp_path):
    from prunelab.compact import CompactionError, compact
    from prunelab.export import compacted_config

    (tmp_path / "nets.py").write_text(NETS)
    config = ModelConfig(f"{tmp_path / 'nets.py'}:eleven")
    with pytest.raises(CompactionError, match="export it as sparse or onnx"):
        compacted_config(config, compact(build_model(config)))
