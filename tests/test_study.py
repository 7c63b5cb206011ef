import csv

import pytest
import torch

from prunelab.models import ModelConfig
from prunelab.results import summary_table
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig

from .conftest import forbid_computation

KS = (0.0, 0.5, 0.9)


def tiny_config(**overrides) -> StudyConfig:
    settings = dict(
        val_size=100,
        model=ModelConfig(hidden=(48, 24)),
        train=TrainConfig(epochs=3, batch_size=32),
        finetune=TrainConfig(epochs=2, batch_size=32, lr=1e-3, lr_schedule="constant"),
        ks=KS,
    )
    return StudyConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def finished(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_study(tiny_config(), RunOptions(out=out, data_dir=tiny_data_dir, device="cpu"))
    return result, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_study_writes_config_tables_base_model_and_figures(finished):
    result, out = finished
    assert (out / "config.json").exists()
    assert (out / "base" / f"{tiny_config().base_id()}.safetensors").exists()
    for name in (
        "accuracy_vs_k",
        "loss_vs_k",
        "size_vs_k",
        "latency_vs_k",
        "epochs_weight",
        "epochs_unit",
    ):
        for suffix in (".png", ".svg"):
            assert (out / "figures" / f"{name}{suffix}").stat().st_size > 1000
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 * len(KS) * 2
    assert {(r["method"], float(r["k"]), r["phase"]) for r in rows} == {
        (m, k, p) for m in ("weight", "unit") for k in KS for p in ("oneshot", "finetuned")
    }
    epochs = read_csv(out / "epochs.csv")
    assert len(epochs) == 2 * len(KS) * 3  # epoch 0 (just pruned) + 2 fine-tuning epochs
    assert "dense test accuracy" in summary_table(result.results, result.dense)


def test_rows_carry_size_and_speed_of_the_deployable_form(finished):
    _, out = finished
    rows = {(r["method"], float(r["k"]), r["phase"]): r for r in read_csv(out / "results.csv")}
    dense_params = 784 * 48 + 48 + 48 * 24 + 24 + 24 * 10 + 10
    assert int(rows[("weight", 0.0, "finetuned")]["params"]) == dense_params
    weight = rows[("weight", 0.9, "finetuned")]
    pruned = round(0.9 * 784 * 48) + round(0.9 * 48 * 24)
    assert int(weight["params"]) == dense_params - pruned
    assert int(weight["bytes_sparse"]) < int(weight["bytes_dense"]) / 4
    unit = rows[("unit", 0.9, "oneshot")]
    assert float(unit["latency_ms_b256"]) > 0 and float(unit["latency_ms_b1"]) > 0
    # FLOPs per sample, a multiply-add counting two: the dense form, then the deployable
    dense_flops = 2 * (784 * 48 + 48 * 24 + 24 * 10)
    assert int(weight["flops_dense"]) == int(unit["flops_dense"]) == dense_flops
    assert int(weight["flops"]) == dense_flops - 2 * pruned  # zero weights skipped
    kept = (48 - round(0.9 * 48), 24 - round(0.9 * 24))  # units left in each hidden layer
    assert int(unit["flops"]) == 2 * (784 * kept[0] + kept[0] * kept[1] + kept[1] * 10)
    for cell in (out / "cells").glob("*.json"):
        assert cell.with_suffix(".safetensors").exists()


def test_measured_sparsity_equals_k_and_masks_held_through_finetuning(finished):
    _, out = finished
    for row in read_csv(out / "results.csv"):
        k = float(row["k"])
        measured = float(row["sparsity"] if row["method"] == "weight" else row["units_removed"])
        # hidden layers of 48 and 24 units: rounding moves the fraction by under 1/48
        assert measured == pytest.approx(k, abs=1 / 48)
        if row["method"] == "weight":
            assert float(row["sparsity"]) == pytest.approx(
                (round(k * 784 * 48) + round(k * 48 * 24)) / (784 * 48 + 48 * 24)
            )


def test_finetuning_recovers_accuracy(finished):
    _, out = finished
    rows = {(r["method"], float(r["k"]), r["phase"]): r for r in read_csv(out / "results.csv")}
    tuned = float(rows[("unit", 0.5, "finetuned")]["test_metric"])
    assert tuned >= float(rows[("unit", 0.5, "oneshot")]["test_metric"]) - 0.01
    assert tuned > 0.8


def test_rerun_reuses_base_model_and_finished_cells(finished, tiny_data_dir, monkeypatch):
    result, out = finished
    forbid_computation(monkeypatch)
    again = run_study(tiny_config(), RunOptions(out=out, data_dir=tiny_data_dir, device="cpu"))
    assert again.results == result.results


def test_results_are_reproducible_from_the_seed(finished, tiny_data_dir, tmp_path):
    result, _ = finished
    config = tiny_config(methods=("unit",), ks=(0.5,))
    again = run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    expected = [r for r in result.results if r["method"] == "unit" and r["k"] == 0.5]
    timings = {"seconds", "latency_ms_b1", "latency_ms_b256"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timings} for r in rows]  # noqa: E731
    assert strip(again.results) == strip(expected)


def test_criteria_and_scopes_in_one_study(tiny_data_dir, tmp_path):
    config = tiny_config(
        methods=("weight:obd", "weight:lamp@global", "unit:obs", "unit:taylor@global"),
        ks=(0.5,),
        calibration_size=128,
    )
    result = run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    rows = read_csv(tmp_path / "results.csv")
    assert {(r["method"], r["criterion"], r["structure"], r["scope"]) for r in rows} == {
        ("weight:obd", "obd", "weight", "layer"),
        ("weight:lamp@global", "lamp", "weight", "global"),
        ("unit:obs", "obs", "unit", "layer"),
        ("unit:taylor@global", "taylor", "unit", "global"),
    }
    layers = read_csv(tmp_path / "layers.csv")
    assert len(layers) == 4 * 2  # two prunable layers per cell
    lamp = [r for r in layers if r["method"] == "weight:lamp@global"]
    total = sum(float(r["sparsity"]) * int(r["weights"]) for r in lamp)
    assert round(total) == round(0.5 * sum(int(r["weights"]) for r in lamp))
    assert len(result.layers) == len(layers)


def test_calibration_changes_only_the_cells_that_use_data():
    a, b = tiny_config(), tiny_config(calibration_size=99)
    from prunelab.prune import PruneMethod

    assert a.cell_id(PruneMethod("weight"), 0.5) == b.cell_id(PruneMethod("weight"), 0.5)
    obd = PruneMethod("weight", "obd")
    assert a.cell_id(obd, 0.5) != b.cell_id(obd, 0.5)


def test_device_names_are_checked():
    from prunelab.bases import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="choose from auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


class NormalizedResidual(torch.nn.Module):
    """Its one hidden group runs through a LayerNorm: no unit can be masked away."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = (torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
                                         torch.nn.Linear(8, 3))  # fmt: skip

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)).relu() + x)


def test_a_model_without_groups_of_units_is_pruned_and_measured_by_weights():
    """Weight methods run on it (a study measures 0 units removed); unit methods are
    refused before anything trains."""
    from prunelab.prune import check_fits
    from prunelab.study import _Measured

    model, example = NormalizedResidual(), torch.randn(2, 8)
    check_fits(model, ["weight:obc", "weight@2:4"], example_inputs=example)
    with pytest.raises(ValueError, match="no group of units to prune"):
        check_fits(model, ["weight", "unit"], example_inputs=example)
    measured = _Measured.of(model, example, StudyConfig())
    assert measured.names == ("fc1",) and measured.units_removed(model) == 0.0
