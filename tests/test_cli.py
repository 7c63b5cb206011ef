import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from prunelab import __version__

from .conftest import run


@pytest.mark.parametrize(
    "argv", [["--help"], ["study", "--help"], ["export", "--help"], ["report", "--help"]]
)
def test_every_command_has_help(argv):
    result = run(*argv)
    assert result.returncode == 0 and "usage: prunelab" in result.stdout


def test_study_smoke_run_of_the_real_cli(tiny_run):
    out, result = tiny_run
    assert result.returncode == 0, result.stderr
    assert "dense test accuracy" in result.stdout
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert (out / "figures" / "accuracy_vs_k.svg").exists()
    assert (out / "report.html").exists() and (out / "report.md").exists()


ONNX = pytest.param(
    "unit", "onnx",
    marks=pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                             reason="the onnx extra is not installed"),
)  # fmt: skip


@pytest.mark.parametrize("method, form", [("unit", "compact"), ("weight", "sparse"), ONNX])
def test_export_writes_a_file_that_reproduces_the_test_accuracy(
    tiny_run, tiny_data_dir, tmp_path, method, form
):
    out, _ = tiny_run
    target = tmp_path / f"{method}.safetensors"
    result = run("export", str(out), "--method", method, "--k", "0.5", "--format", form,
                 "-o", str(target), "--data-dir", str(tiny_data_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert target.exists() and f"{target.stat().st_size:,} bytes" in result.stdout
    with open(out / "results.csv") as f:
        rows = {(r["method"], r["k"], r["phase"]): r for r in csv.DictReader(f)}
    row = rows[(method, "0.5", "finetuned")]
    reported = float(result.stdout.rsplit("test accuracy ", 1)[1])
    assert abs(reported - float(row["test_metric"])) < 1e-4


def test_export_with_a_codebook_is_smaller_and_deep_compression_smaller_still(
    tiny_run, tiny_data_dir, tmp_path
):
    from prunelab.export import load_sparse

    out, _ = tiny_run
    sizes = {}
    deep = ["--codebook", "4", "--codebook-epochs", "1", "--entropy", "huffman"]
    for name, extra in (("plain", []), ("shared", ["--codebook", "4"]), ("deep", deep)):
        target = tmp_path / f"{name}.safetensors"
        result = run("export", str(out), "--method", "weight", "--k", "0.5", "-o", str(target),
                     "--data-dir", str(tiny_data_dir), *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        sizes[name] = target.stat().st_size
    assert sizes["shared"] < sizes["plain"]
    # Huffman: the gaps of a half-pruned layer take about 2 bits, not a byte
    assert sizes["deep"] < 0.7 * sizes["shared"]
    shared, deep = (load_sparse(tmp_path / f"{n}.safetensors")[0] for n in ("shared", "deep"))
    for name, value in deep.state_dict().items():
        if value.dim() == 2:  # the same weights kept, their shared values trained
            assert torch.equal(value != 0, shared.state_dict()[name] != 0)
            assert not torch.equal(value, shared.state_dict()[name])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "unit", "--k", "0.3"], "k=0.3 is not in this run"),
        (["--method", "weight:obd", "--k", "0.5"], "'weight:obd' is not in this run"),
        (
            ["--method", "unit", "--k", "0.5", "--format", "compact", "--codebook", "4"],
            "sparse format only",
        ),
        (["--method", "weight", "--k", "0.5", "--codebook", "12"], "1 to 8 bits"),
        (["--method", "weight", "--k", "0.5", "--codebook-epochs", "1"], "needs a codebook"),
        (
            ["--method", "weight", "--k", "0.5", "--seed", "7"],
            "seed 7 is not in this run; it has seeds 0",
        ),
        (
            ["--method", "weight", "--k", "0.5", "--codebook", "4", "--codebook-lr", "0.01"],
            "give its epochs too",
        ),
        (
            ["--method", "unit", "--k", "0.5", "--format", "compact", "--entropy", "huffman"],
            "sparse format only",
        ),
    ],
)
def test_export_of_something_not_in_the_run_is_a_clear_error(tiny_run, tmp_path, args, message):
    out, _ = tiny_run
    result = run("export", str(out), *args, "-o", str(tmp_path / "x"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ks", "1.5"], "k must be in [0, 1)"),
        (["--ks", "-0.1"], "k must be in [0, 1)"),
        (["--ks", "abc"], "argument --ks: expected a number, got 'abc'"),
        (["--methods", "nonsense"], "unknown structure 'nonsense'"),
        (["--dataset", "nonsense"], "unknown dataset 'nonsense'; choose from mnist"),
        (["--device", "tpu"], "argument --device: unknown device 'tpu'; choose from auto"),
    ],
)
def test_bad_input_is_a_one_line_error_without_traceback(args, message, tmp_path):
    result = run("study", "--out", str(tmp_path / "o"), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_unwritable_out_is_a_clear_error(tmp_path, tiny_data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("study", "--data-dir", str(tiny_data_dir), "--out", str(blocker / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith("prunelab: error:") and "Traceback" not in result.stderr


def test_missing_dataset_says_how_to_get_it(tmp_path):
    result = run("study", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no mnist IDX files" in result.stderr


def test_lenet5_with_criteria_and_global_scope_from_the_cli(tiny_data_dir, tmp_path):
    out = tmp_path / "cnn"
    result = run(
        "study", "--data-dir", str(tiny_data_dir), "--val-size", "100", "--model", "lenet5",
        "--epochs", "1", "--finetune-epochs", "1", "--ks", "0.5", "--methods",
        "weight:obd,unit:magnitude", "--scope", "layer,global", "--calibration", "64",
        "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(out / "results.csv") as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert methods == {"weight:obd", "unit", "weight:obd@global", "unit@global"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "weight:voodoo"], "unknown criterion 'voodoo'"),
        (["--methods", "weight:obs", "--scope", "global"], "use scope 'layer'"),
        (["--scope", "everywhere"], "unknown scope 'everywhere'"),
    ],
)
def test_bad_criteria_and_scopes_are_one_line_errors(args, message, tmp_path):
    result = run("study", "--out", str(tmp_path / "o"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="argparse 3.13 words help otherwise")
def test_the_readme_cli_reference_is_the_help_of_every_command():
    """Regenerate it with ``python docs/cli_reference.py`` (on the Python CI runs)."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "docs" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = module.README.read_text()
    assert readme == module.updated(readme), "run python docs/cli_reference.py"
    for name in ("study", "budget", "export", "report", "status"):
        assert f"`prunelab {name} --help`" in readme


@pytest.mark.parametrize(
    "flag, setting",
    [
        ("--epochs", lambda c: c.train.epochs),
        ("--lr-schedule", lambda c: c.train.lr_schedule),
        ("--finetune-lr", lambda c: c.finetune.lr),
        ("--finetune-lr-schedule", lambda c: c.finetune.lr_schedule),
        ("--finetune-epochs", lambda c: c.finetune.epochs),
    ],
)
def test_help_states_each_recipes_own_default(flag, setting):
    from prunelab.study_config import RECIPES, Start, configure, every_setting

    (option,) = [s for s in every_setting() if f"--{s.flag}" == flag]
    for name in RECIPES:
        value = setting(configure(start=Start(recipe=name)))
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"{name} {shown}" in option.help or f"(default: {shown})" in option.help, flag


def test_version_comes_from_the_package():
    from importlib.metadata import version

    import prunelab

    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"prunelab {prunelab.__version__}"
    assert version("prunelab") == prunelab.__version__


def test_threads_follow_omp_num_threads():
    """CI runs the suite with OMP_NUM_THREADS=1; the default threads must follow it
    (rather than the machine's core count)."""
    code = (
        "from prunelab.executors import Execution; "
        "print(Execution().threads_per_cell, Execution(workers=2).threads_per_cell)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["1", "1"], result.stderr


def test_library_errors_name_settings_and_the_cli_names_flags(tmp_path):
    from prunelab.cli import in_flags
    from prunelab.tasks import METRICS

    with pytest.raises(ValueError, match="^`max_drop` is a tolerance") as err:
        METRICS["accuracy"].check_tolerance(60)
    assert in_flags(str(err.value)).startswith("--max-drop is a tolerance")
    result = run("study", "--workers", "0", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "error: --workers must be at least 1" in result.stderr


def test_python_dash_m_prunelab_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "prunelab", "--version"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == f"prunelab {__version__}"
