"""--log tensorboard,mlflow: each training run's epochs and each cell's per-layer sparsity
and results reach TensorBoard's event files and MLflow's runs, read back by their own
readers; a logger that is unknown or not installed is refused before anything trains."""

import importlib.util

import pytest

from prunelab.models import ModelConfig
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def tiny_study(data_dir, out, log):
    config = StudyConfig(val_size=100, train=TrainConfig(epochs=2), methods=("unit",),
                         ks=(0.5,), model=ModelConfig(hidden=(16, 8)))  # fmt: skip
    options = RunOptions(out=out, data_dir=data_dir, device="cpu", log=log)
    return run_study(config, options)


@pytest.fixture(scope="module")
def logged(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("logged")
    return out, tiny_study(tiny_data_dir, out, ("tensorboard", "mlflow"))


def test_tensorboard_gets_every_epoch_and_each_layers_sparsity(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, result = logged
    dense = EventAccumulator(str(out / "tensorboard" / "dense-seed0")).Reload()
    losses = [event.value for event in dense.Scalars("dense/train_loss")]
    assert losses == pytest.approx([r["train_loss"] for r in result.dense["history"]])
    cell = EventAccumulator(str(out / "tensorboard" / "unit-k0.5-seed0")).Reload()
    layers = {row["layer"]: row["sparsity"] for row in result.layers}
    for layer, sparsity in layers.items():
        assert cell.Scalars(f"sparsity/{layer}")[0].value == pytest.approx(sparsity)
    final = [r for r in result.results if r["phase"] == "finetuned"][0]
    assert cell.Scalars("final/test_metric")[0].value == pytest.approx(final["test_metric"])
    tuned = [event.value for event in cell.Scalars("finetune/val_metric")]
    assert tuned == pytest.approx([row["val_metric"] for row in result.epochs])  # 0 and 1


def test_mlflow_gets_a_run_per_training_run_with_its_metrics(logged):
    from mlflow.tracking import MlflowClient

    out, result = logged
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(out.resolve().name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"dense-seed0", "unit-k0.5-seed0"}
    history = client.get_metric_history(runs["dense-seed0"].info.run_id, "dense/val_metric")
    assert [m.value for m in history] == pytest.approx(
        [r["val_metric"] for r in result.dense["history"]]
    )
    cell = runs["unit-k0.5-seed0"]
    assert cell.data.params["method"] == "unit" and cell.info.status == "FINISHED"
    assert cell.data.metrics["final/units_removed"] == pytest.approx(0.5, abs=0.05)


def test_an_unknown_or_missing_logger_is_refused_before_training(tiny_data_dir, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    with pytest.raises(ValueError, match="unknown logger 'wandb'; choose from csv"):
        tiny_study(tiny_data_dir, tmp_path / "a", ("wandb",))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))  # fmt: skip
    with pytest.raises(ValueError, match=r"--log mlflow needs the mlflow package: pip install"):
        tiny_study(tiny_data_dir, tmp_path / "b", ("mlflow",))
    assert not (tmp_path / "b" / "base").exists()
