"""Wall time of a study of many small cells: one process, N local workers, Ray.

Fashion-MNIST, a small MLP (256-128), 10,000 training images; 4 methods x 10 k
= 40 cells of one fine-tuning epoch. Each executor runs the same command in a
fresh run directory into which the dense model, trained once beforehand, is
copied, so the times are those of the cells. Needs Debian's Fashion-MNIST
(``apt-get install dataset-fashion-mnist``) or ``--data-dir``, and for Ray the
``ray`` extra.

    python benchmarks/executors.py [--workers 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = [
    "study", "--dataset", "fashion-mnist", "--hidden", "256,128", "--train-limit", "10000",
    "--methods", "weight,unit,weight:obd,unit:obd",
    "--ks", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95", "--device", "cpu",
]  # fmt: skip


def prunelab(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prunelab.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    data = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    runs = [("1 process", []), (f"{args.workers} workers", ["--workers", str(args.workers)])]
    if importlib.util.find_spec("ray") is not None:
        runs.append(("Ray, local", ["--executor", "ray"]))
    with tempfile.TemporaryDirectory() as tmp:
        seed_run = Path(tmp) / "base"
        prunelab(*STUDY, *data, "--ks", "0.5", "--methods", "weight", "--out", str(seed_run))
        print("| executor | wall time (s) | vs 1 process |")
        print("|---|---:|---:|")
        baseline = None
        for name, extra in runs:
            out = Path(tmp) / name.replace(" ", "-").replace(",", "")
            shutil.copytree(seed_run / "base", out / "base")  # the dense model, trained once
            seconds = prunelab(*STUDY, *data, *extra, "--out", str(out))
            baseline = baseline or seconds
            print(f"| {name} | {seconds:.1f} | {baseline / seconds:.2f}x |")


if __name__ == "__main__":
    main()
