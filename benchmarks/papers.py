"""Han et al. (2015) and Deep Compression (Han, Mao and Dally 2016) on MNIST's
LeNet-300-100 and LeNet-5, reproduced: test error, weights kept and file size, the
papers' figures beside prunelab's, averaged over seeds.

    python benchmarks/papers.py [--seeds 3] [--nets lenet300,lenet5] [--out runs/papers]

The recipe, the same for both networks (``RECIPE``, ``TRAIN``, ``PRUNE``):

1. Dense: SGD, Nesterov momentum 0.9, weight decay 5e-4 (the papers' L2), learning
   rate 0.05 on a cosine schedule, batch 128.
2. Pruning (Han et al. 2015): magnitude, all layers ranked together, the last one
   included (``weight@global``), to k = 0.92 (12.5x fewer weights), raised gradually
   during retraining (Zhu and Gupta's cubic schedule, a smooth form of Han et al.'s
   iterations) with the dense recipe.
3. Deep Compression: each layer's kept weights share a 4-bit codebook (15 values and
   the zero) whose centroids are then trained for an epoch, and the column gaps and
   codes are Huffman coded (``prunelab export --codebook 4 --codebook-epochs 1
   --entropy huffman``). Its size is compared with the float32 state dict.

Runs through the study: a rerun reuses the trained and pruned models of --out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from prunelab.export import dense_bytes, export_cell, load_sparse
from prunelab.models import ModelConfig
from prunelab.schedules import Schedule
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig, fast_cpu_math

METHOD, K = "weight@global", 0.92
TRAIN = TrainConfig("sgd", lr=0.05, batch_size=128, momentum=0.9, nesterov=True,
                    weight_decay=5e-4, lr_schedule="cosine")  # fmt: skip
CODEBOOK_BITS, CODEBOOK_EPOCHS = 4, 1


@dataclass(frozen=True)
class Paper:
    """The published figures: error in %, compression as x, size in KB."""

    dense_error: float
    pruned_error: float
    pruned_x: float
    coded_error: float
    coded_x: float
    coded_kb: float


@dataclass(frozen=True)
class Net:
    model: ModelConfig
    dense_epochs: int
    prune_epochs: int
    augment: bool  # small random rotations, zooms and shifts, in both phases
    paper: Paper


NETS = {
    # Han et al. 2015, Table 1; Han, Mao and Dally 2016, Table 1
    "lenet300": Net(ModelConfig("mlp", hidden=(300, 100)), 30, 40, False,
                    Paper(1.64, 1.59, 12, 1.58, 40, 27)),
    "lenet5": Net(ModelConfig("lenet5-caffe"), 20, 20, True,
                  Paper(0.80, 0.77, 12, 0.74, 39, 44)),
}  # fmt: skip


def study_config(net: Net, seeds: int) -> StudyConfig:
    return StudyConfig(
        model=net.model, methods=(METHOD,), ks=(K,), prune_last=True, seeds=seeds,
        train=replace(TRAIN, epochs=net.dense_epochs, augment=net.augment),
        finetune=replace(TRAIN, epochs=net.prune_epochs, augment=net.augment),
        schedule=Schedule("gradual"),
    )  # fmt: skip


def reproduce(name: str, net: Net, seeds: int, out: Path) -> dict[str, list[float]]:
    """Train, prune and code ``net`` for every seed; its figures, one per seed (the dense
    error: their mean)."""
    config = study_config(net, seeds)
    run_dir = out / name
    result = run_study(config, RunOptions(out=run_dir))
    figures: dict[str, list[float]] = {"dense_error": [100 * (1 - result.dense["test_metric"])]}
    with tempfile.TemporaryDirectory() as scratch:
        for c in config.per_seed():
            cell = next(r for r in result.results
                        if r["seed"] == c.seed and r["phase"] == "finetuned")  # fmt: skip
            coded = export_cell(run_dir, METHOD, K, "sparse", Path(scratch) / f"{c.seed}.st",
                                codebook_bits=CODEBOOK_BITS, codebook_epochs=CODEBOOK_EPOCHS,
                                entropy="huffman", seed=c.seed)  # fmt: skip
            model, _ = load_sparse(coded.path)
            total = sum(p.numel() for p in model.parameters())
            for key, value in {
                "pruned_error": 100 * (1 - cell["test_metric"]),
                "pruned_x": total / cell["params"],
                "coded_error": 100 * (1 - coded.test_metric),
                "coded_x": dense_bytes(model) / coded.bytes,
                "coded_kb": coded.bytes / 1000,
            }.items():
                figures.setdefault(key, []).append(value)
    return figures


def row(label: str, values: dict[str, float | str]) -> str:
    return f"| {label} | " + " | ".join(str(values[k]) for k in COLUMNS) + " |"


COLUMNS = ("dense_error", "pruned_error", "pruned_x", "coded_error", "coded_kb", "coded_x")
HEADER = ("dense error %", "pruned error %", "parameters kept", "coded error %", "coded KB",
          "coded vs dense")  # fmt: skip


def main() -> None:
    fast_cpu_math()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--out", type=Path, default=Path("runs/papers"))
    args = parser.parse_args()
    names = args.nets.split(",")
    lines = ["| network | " + " | ".join(HEADER) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name in names:
        net = NETS[name]
        figures = reproduce(name, net, args.seeds, args.out)
        paper = {k: f"{getattr(net.paper, k):.2f}" for k in COLUMNS}
        paper.update(pruned_x=f"1/{net.paper.pruned_x:g}", coded_x=f"1/{net.paper.coded_x:g}")
        ours = {}
        for key, values in figures.items():
            mean = statistics.mean(values)
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""  # sd
            ours[key] = f"{mean:.2f}{spread}"
        ours["pruned_x"] = f"1/{statistics.mean(figures['pruned_x']):.1f}"
        ours["coded_x"] = f"1/{statistics.mean(figures['coded_x']):.1f}"
        lines += [row(f"{name}: published", paper),
                  row(f"{name}: prunelab, {args.seeds} seeds", ours)]  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
