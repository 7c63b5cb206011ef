"""Cells as Ray tasks on a local Ray instance (2 CPUs here); skipped without ray."""

import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("ray")

from .conftest import PRUNELAB, run  # noqa: E402
from .test_rundir import results_without_timing, tiny_args  # noqa: E402


def ray_task_pids() -> list[int]:
    """Processes running a cell as a Ray task (Ray titles them after the function)."""
    found = subprocess.run(["pgrep", "-f", "ray::_ray_task"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_ray_gives_the_results_of_one_worker_even_when_a_worker_is_killed(tiny_data_dir, tmp_path):
    extra = ("--methods", "weight,unit", "--ks", "0.3,0.6,0.9")
    local = run(*tiny_args(tiny_data_dir, tmp_path / "local", *extra, "--threads", "1"))
    assert local.returncode == 0, local.stderr
    study = subprocess.Popen(
        [*PRUNELAB, *tiny_args(tiny_data_dir, tmp_path / "ray", *extra, "--executor", "ray")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed, deadline = None, time.monotonic() + 120
    while killed is None and study.poll() is None and time.monotonic() < deadline:
        pids = ray_task_pids()
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)  # a worker dies mid-cell
        time.sleep(0.05)
    _, err = study.communicate(timeout=300)
    assert killed is not None, "no Ray task was seen running"
    assert study.returncode == 0, err
    status = run("status", str(tmp_path / "ray"))
    assert "6 finished, 0 failed, 0 pending" in status.stdout
    assert results_without_timing(tmp_path / "ray") == results_without_timing(tmp_path / "local")


def test_an_unreachable_ray_address_is_a_one_line_error(tmp_path):
    result = run("study", "--executor", "ray", "--ray-address", "127.0.0.1:9",
                 "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
