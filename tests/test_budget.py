import csv
import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunelab.budget import K_MAX, Probe, Rewind, find_budget, search
from prunelab.data import load_dataset
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.tasks import METRICS
from prunelab.train import TrainConfig, train

from .conftest import run

README = Path(__file__).parent.parent / "README.md"


def cliff(at: float):
    """A probe whose accuracy holds at 0.98 up to k = ``at``, then falls off."""
    return lambda k: Probe(k, 0.98 if k <= at else 0.5)


@pytest.mark.parametrize("at", [0.1, 0.5, 0.63, 0.9, 0.97, 0.993])
def test_search_finds_the_edge_to_its_resolution(at):
    best, probes = search(cliff(at), dense_val=0.985, max_drop=1.0, resolution=0.005)
    assert at - 0.005 <= best.k <= at
    assert len(probes) <= 12


def test_search_when_nothing_or_everything_is_within():
    best, probes = search(lambda k: Probe(k, 0.2), 0.985, 1.0)
    assert best is None and min(p.k for p in probes) < 0.005
    best, _ = search(lambda k: Probe(k, 0.99), 0.985, 1.0)
    assert best.k == K_MAX


@pytest.mark.parametrize("drop", [-1, 50, 1e9, float("nan")])
def test_absurd_tolerances_are_refused(drop):
    with pytest.raises(ValueError, match="tolerance in accuracy points"):
        METRICS["accuracy"].check_tolerance(drop)


@pytest.fixture(scope="module")
def trained(tiny_data_dir):
    data = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    model = build_model(ModelConfig(hidden=(48, 24)), seed=0)
    train(model, data.train, data.val, TrainConfig(epochs=8, batch_size=32), seed=0)
    loaders = {
        name: DataLoader(TensorDataset(split.x, split.y), batch_size=64)
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    return model, loaders


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### Your own model") :]
    return section[section.index("```python") + len("```python") : section.index("```\n", 10)]


def test_the_readme_example_runs_and_answers(trained):
    model, loaders = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    namespace = {"model": model, "train_loader": loaders["train"], "val_loader": loaders["val"]}
    exec(readme_example(), namespace)  # the example as printed in the README
    result = namespace["result"]
    assert 0 < result.answer.k <= K_MAX
    assert result.answer.val_metric >= result.answer.dense_val_metric - 0.02
    layers = prunable_layers(result.model)
    removed = sum(int((layer.weight.flatten(1) == 0).all(1).sum()) for layer in layers.values())
    total = sum(layer.weight.shape[0] for layer in layers.values())
    assert removed / total == pytest.approx(result.answer.k, abs=0.02)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_a_model_whose_forward_fails_is_a_clear_error(trained):
    model, loaders = trained
    wrong = DataLoader(TensorDataset(torch.rand(10, 3, 5), torch.zeros(10)), batch_size=5)
    with pytest.raises(ValueError, match="forward fails on the training data"):
        find_budget(model, wrong, loaders["val"])


def test_budget_command_and_its_k_rerun_as_a_study(tiny_data_dir, tmp_path):
    common = ["--data-dir", str(tiny_data_dir), "--val-size", "100", "--hidden", "32,16",
              "--epochs", "3", "--device", "cpu"]  # fmt: skip
    result = run("budget", *common, "--max-drop", "5", "--structure", "unit",
                 "--out", str(tmp_path / "b"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads((tmp_path / "b" / "budget.json").read_text())
    assert re.search(r"up to [\d.]+% of the hidden units can be removed", answer["sentence"])
    assert answer["sentence"] in result.stdout and Path(answer["model_file"]).exists()
    study = run("study", *common, "--methods", "unit", "--ks", str(answer["k"]),
                "--out", str(tmp_path / "s"))  # fmt: skip
    assert study.returncode == 0, study.stderr
    with open(tmp_path / "s" / "results.csv") as f:
        (final,) = [r for r in csv.DictReader(f) if r["phase"] == "finetuned"]
    assert float(final["test_metric"]) == pytest.approx(answer["test_metric"], abs=0.002)


@pytest.mark.parametrize(
    "args, message",
    [(["--max-drop", "-1"], "tolerance"),
     (["--schedules", "cyclic"], "unknown schedule 'cyclic'; choose from oneshot"),
     (["--criteria", "biggest"], "unknown criterion 'biggest'; choose from magnitude")],
)  # fmt: skip
def test_budget_bad_input_is_one_line(args, message):
    result = run("budget", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_the_lottery_of_your_own_model_rewinds_to_the_state_you_give(trained):
    """With a retraining recipe of 0 epochs, what survives is exactly the rewound weights
    under the mask: the rewind reached the model. The weights rewound to are the trained
    ones times 1.01, which a ReLU network classifies alike."""
    model, loaders = trained
    early = {name: 1.01 * value for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="rewinds to early dense weights: give rewind="):
        find_budget(model, loaders["train"], loaders["val"], schedule="lottery")
    result = find_budget(
        model, loaders["train"], loaders["val"], schedule="lottery", max_drop=50 - 1e-9,
        rewind=Rewind(early, TrainConfig(epochs=0)), resolution=0.2,
    )  # fmt: skip
    assert result.answer.k > 0
    for name, value in result.model.state_dict().items():
        if name.endswith("weight") and name in early:
            kept = value != 0
            assert torch.equal(value[kept], early[name][kept])
            assert 0 < kept.float().mean() < 1 or name == "5.weight"  # the logits layer
