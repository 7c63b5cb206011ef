"""Run directories that survive crashes: locks, compatibility, failures, resumption."""

import csv
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import replace

import pytest
import torch

from prunelab import study as study_module
from prunelab import study_config
from prunelab.models import ModelConfig, build_model
from prunelab.report import write_report
from prunelab.results import renamed
from prunelab.rundir import RunDirError, RunLock
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig, train

from .conftest import FIXTURE_0_1_0, PRUNELAB, count_cells, forbid_computation, run

TIMING = ("seconds", "latency_ms_b1", "latency_ms_b256")


def tiny_args(data_dir, out, *extra):
    return ["study", "--data-dir", str(data_dir), "--val-size", "100", "--hidden", "32,16",
            "--epochs", "1", "--ks", "0,0.5,0.9", "--device", "cpu", "--out", str(out),
            *extra]  # fmt: skip


def results_without_timing(out):
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_a_locked_directory_is_refused_naming_its_holder(tiny_data_dir, tmp_path):
    with RunLock(tmp_path / "run"):
        result = run(*tiny_args(tiny_data_dir, tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is in use by process {os.getpid()}" in result.stderr


def test_an_incompatible_directory_is_refused_and_a_grid_change_is_not(tiny_data_dir, tmp_path):
    config = StudyConfig(val_size=100, model=ModelConfig(hidden=(16,)), methods=("weight",),
                         train=TrainConfig(epochs=1), ks=(0.5,))  # fmt: skip
    options = RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu")
    run_study(config, options)
    with pytest.raises(RunDirError, match="holds a study with a different model, train"):
        run_study(replace(config, model=ModelConfig(hidden=(8,)), train=TrainConfig()), options)
    grown = run_study(replace(config, ks=(0.5, 0.7), seeds=2, methods=("weight", "unit")), options)
    assert len(grown.results) == 2 * 2 * 2 * 2


def test_a_failing_cell_is_recorded_the_others_finish_and_a_rerun_retries_it(
    tiny_data_dir, tmp_path, monkeypatch
):
    config = StudyConfig(val_size=100, model=ModelConfig(hidden=(32, 16)),
                         train=TrainConfig(epochs=1), ks=(0.5, 0.9))  # fmt: skip
    options = RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu")
    real = study_module._run_cell

    def flaky(config, base, rewind, method, k, *args):
        if method.name == "unit" and k == 0.9:
            raise RuntimeError("out of memory, say")
        return real(config, base, rewind, method, k, *args)

    monkeypatch.setattr(study_module, "_run_cell", flaky)
    result = run_study(config, options)
    assert result.failures == [
        {"method": "unit", "k": 0.9, "seed": 0, "error": "RuntimeError: out of memory, say"}
    ]
    assert len(result.results) == 3 * 2  # the three other cells, one-shot and fine-tuned
    status = run("status", str(tmp_path))
    assert "3 finished, 1 failed, 0 pending" in status.stdout
    assert "failed  unit k=0.9 seed 0: RuntimeError: out of memory, say" in status.stdout
    monkeypatch.setattr(study_module, "_run_cell", real)
    assert run_study(config, options).failures == []
    assert not list(tmp_path.glob("cells/*.failed.json"))


def test_a_nan_loss_is_an_error_not_a_result():
    model = build_model(ModelConfig(hidden=(8,)), seed=0)
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    from prunelab.data import Split

    with pytest.raises(FloatingPointError, match="training loss became nan"):
        train(model, Split(x, y), Split(x, y), TrainConfig(epochs=1), seed=0)


def cell_name(path):
    cell = json.loads(path.read_text())
    return cell["method"] + str(cell["k"])


def computed_cells(lines):
    """The cells a study printed as computed: "METHOD k=K seed S test accuracy ..."."""
    words = [line.split() for line in lines if "test accuracy one-shot" in line]
    return {w[0] + str(float(w[1][2:])) for w in words}


def test_sigkill_at_random_moments_loses_nothing_finished(tiny_data_dir, tmp_path):
    """Kill a study three times while it runs (once just after its dense model is
    saved, twice after a random number of cells), resume it each time: every kill
    hits a running study, the final tables equal an uninterrupted run's, and no cell
    is computed twice."""
    grid = ("--methods", "weight,weight:obd", "--ks", "0,0.3,0.5,0.6,0.7,0.8,0.9,0.95,0.97,0.99")
    args = tiny_args(tiny_data_dir, tmp_path / "killed", *grid)
    assert run(*tiny_args(tiny_data_dir, tmp_path / "whole", *grid)).returncode == 0
    rng = random.Random(0)
    computed, kills = [], 0
    for attempt in range(4):
        finished = set(map(cell_name, (tmp_path / "killed").glob("cells/*.json")))
        process = subprocess.Popen([*PRUNELAB, *args], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        lines = []
        if attempt < 3:  # 20 cells: at most 1 + 2 * 3 finish before the last kill
            cells = rng.randint(1, 3) if attempt else 0
            while not lines or len(computed_cells(lines)) < cells:
                lines.append(process.stdout.readline())
                assert lines[-1], f"the study ended before the kill (status {process.wait()})"
            time.sleep(rng.uniform(0.0, 0.05))
            process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=300)
        lines += out.splitlines()
        if attempt < 3:
            assert process.returncode == -signal.SIGKILL, "the study had ended: no kill hit it"
            kills += 1
        done_now = computed_cells(lines)
        assert not done_now & finished, "a finished cell was computed again"
        computed += done_now
    assert kills == 3 and process.returncode == 0
    assert len(computed) == len(set(computed))  # (a cell written just before a kill
    # may have gone unreported, so fewer than twenty is possible)
    assert results_without_timing(tmp_path / "killed") == results_without_timing(tmp_path / "whole")


def test_a_0_1_0_run_directory_resumes_after_a_setting_is_added(
    tiny_data_dir, tmp_path, monkeypatch
):
    """0.1.0 hashed every setting into ids; its directories are renamed to today's ids,
    which a setting added later (here a TrainConfig field) leaves unchanged."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE_0_1_0, run_dir)
    stored = study_config.load_config(run_dir / "config.json")
    grown = dataclasses.make_dataclass(
        "TrainConfig", [("label_smoothing", float, 0.0)], bases=(TrainConfig,), frozen=True
    )
    monkeypatch.setattr(study_config, "TrainConfig", grown)  # what config.json is read with
    config = replace(stored, train=grown(**dataclasses.asdict(stored.train)))
    options = RunOptions(out=run_dir, data_dir=tiny_data_dir, device="cpu")
    with monkeypatch.context() as patch:
        forbid_computation(patch)
        run_study(config, options)
    # 0.1.0 had fewer columns, and named the metric's for accuracy
    stored = [renamed(row) for row in results_without_timing(FIXTURE_0_1_0)]
    resumed = [{key: row[key] for key in stored[0]} for row in results_without_timing(run_dir)]
    assert resumed == stored
    assert not list(run_dir.glob("cells/a9044f4e595f1866.*"))  # renamed, not copied
    write_report(run_dir)  # its dense record still names the metric for accuracy
    assert "dense model | test accuracy" in (run_dir / "report.md").read_text()
    cells = count_cells(monkeypatch)
    grown_grid = run_study(replace(config, ks=(0.5, 0.9)), options)
    assert len(cells) == 2 and {row["k"] for row in grown_grid.results} == {0.5, 0.9}


def test_two_workers_give_the_results_of_one(tiny_data_dir, tmp_path):
    """With the same torch threads per cell (float sums depend on the thread count)."""
    one = run(*tiny_args(tiny_data_dir, tmp_path / "one", "--threads", "1"))
    two = run(*tiny_args(tiny_data_dir, tmp_path / "two", "--workers", "2", "--threads", "1"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert results_without_timing(tmp_path / "one") == results_without_timing(tmp_path / "two")


def test_sweep_file_expands_its_lists_and_the_command_line_overrides_it(tiny_data_dir, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'dataset = ["mnist", "fashion-mnist"]\nmethods = ["weight"]\nks = [0.5, 0.9]\n'
        "finetune-epochs = 1\nepochs = 1\nhidden = [16]\nval-size = 100\n"
    )
    out = tmp_path / "sweep"
    result = run("study", "--config", str(sweep), "--data-dir", str(tiny_data_dir),
                 "--ks", "0.7", "--device", "cpu", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("mnist-mlp-oneshot", "fashion-mnist-mlp-oneshot"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["ks"] == [0.7] and config["methods"] == ["weight"]
        assert config["model"]["hidden"] == [16] and config["dataset"] == name.rsplit("-", 2)[0]


@pytest.mark.parametrize(
    "text, message",
    [("ks = [0.5,", "is not valid TOML"), ("learning_rate = 3", "unknown key 'learning_rate'")],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, message):
    sweep = tmp_path / "bad.toml"
    sweep.write_text(text)
    result = run("study", "--config", str(sweep), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
