import csv
import math
from dataclasses import replace

import pytest
import torch

from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import PruneMethod, prune
from prunelab.schedules import Schedule, cubic_sparsity, round_targets
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig


def test_round_targets_shrink_the_kept_fraction_geometrically():
    targets = round_targets(0.99, 4)
    kept = [1 - t for t in targets]
    assert targets[-1] == pytest.approx(0.99)
    ratios = [b / a for a, b in zip([1.0, *kept], kept, strict=False)]
    assert ratios == pytest.approx([0.01**0.25] * 4)


def test_cubic_schedule_rises_from_zero_to_k_and_then_stays():
    values = [cubic_sparsity(t, 0.9, 100) for t in range(0, 151)]
    assert values[0] == 0 and values[100] == pytest.approx(0.9) and values[150] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[50] == pytest.approx(0.9 * (1 - 0.5**3))


@pytest.mark.parametrize("criterion", ["magnitude", "random", "obs"])
@pytest.mark.parametrize("structure", ["weight", "unit"])
def test_pruned_entries_stay_pruned_and_count_towards_k(structure, criterion):
    model = build_model(ModelConfig(hidden=(40, 20)), seed=0)
    batches = [(torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)))]
    method = PruneMethod(structure, criterion)
    first = prune(model, method, 0.5, batches=batches, seed=1)
    second = prune(model, method, 0.8, batches=batches, seed=2, pruned=first)
    for name, mask in first.items():
        assert not (second[name] & ~mask).any(), name  # nothing pruned comes back
    for layer in prunable_layers(model).values():
        zero = layer.weight.flatten(1) == 0
        measured = zero.all(1).float().mean() if structure == "unit" else zero.float().mean()
        assert float(measured) == pytest.approx(0.8, abs=0.03)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'cyclic'"):
        Schedule("cyclic")
    with pytest.raises(ValueError, match="ramp"):
        Schedule("gradual", ramp=0)


def tiny_config(**changes) -> StudyConfig:
    base = StudyConfig(
        val_size=100,
        model=ModelConfig(hidden=(32, 16)),
        train=TrainConfig(epochs=1, batch_size=64),
        finetune=TrainConfig(epochs=2, batch_size=64),
        methods=("weight", "unit"),
        ks=(0.9,),
    )
    return replace(base, **changes)


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["iterative", "gradual", "lottery"])
def test_every_schedule_ends_at_exactly_k_with_its_masks(tiny_data_dir, tmp_path, name):
    config = tiny_config(schedule=Schedule(name, rounds=3, every=2, rewind_steps=3))
    run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    rows = read(tmp_path / "results.csv")
    final = [r for r in rows if r["phase"] in ("finetuned", "reinit")]
    assert {r["schedule"] for r in rows} == {name}
    for row in final:  # exact up to rounding k * n in each layer
        measured = row["units_removed" if row["structure"] == "unit" else "sparsity"]
        assert float(measured) == pytest.approx(0.9, abs=0.01), row
    phases = sorted({r["phase"] for r in rows})
    assert phases == (["finetuned", "oneshot", "reinit"] if name == "lottery"
                      else ["finetuned", "oneshot"])  # fmt: skip
    epochs = [r for r in read(tmp_path / "epochs.csv") if r["method"] == "weight"]
    expected = {"iterative": 3 * 2, "gradual": 2, "lottery": 3 * 1}[name]
    assert max(int(r["epoch"]) for r in epochs) == expected


def test_seeds_give_one_row_each_and_a_summary_with_mean_and_std(tiny_data_dir, tmp_path):
    config = tiny_config(methods=("weight",), seeds=2, finetune=TrainConfig(epochs=1))
    result = run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    rows = [r for r in result.results if r["phase"] == "finetuned"]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    accuracies = [r["test_metric"] for r in rows]
    (summary,) = [r for r in read(tmp_path / "summary.csv") if r["phase"] == "finetuned"]
    assert int(summary["seeds"]) == 2
    assert float(summary["test_metric_mean"]) == pytest.approx(sum(accuracies) / 2)
    std = abs(accuracies[0] - accuracies[1]) / math.sqrt(2)
    assert float(summary["test_metric_std"]) == pytest.approx(std)
    assert len(list((tmp_path / "base").glob("*.json"))) == 2  # one base model per seed
