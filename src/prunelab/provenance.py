"""What a result was computed with: versions, processor, threads and device.

Float results depend on all of these (the thread count fixes the order of
summation), so a run directory records them beside its configuration and each
cell beside its results.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

import prunelab


def environment(device: torch.device | str, threads: int | None = None) -> dict:
    device = torch.device(device)
    return {
        "prunelab": prunelab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "device": str(device),
    }


@functools.cache
def cpu_name() -> str:
    """The processor's model name where the system tells it, else its architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def describe(env: dict) -> str:
    """One line for a report: versions, then where it ran."""
    where = env["gpu"] or env["cpu"]
    return (
        f"prunelab {env['prunelab']}, torch {env['torch']}, Python {env['python']}; "
        f"{where}, device {env['device']}, {env['threads']} torch thread(s)"
    )
