"""A study's tables: the columns of its CSV files, statistics over seeds, and the
plain-text summary the command line prints."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from prunelab.storage import atomic_write_text

RESULT_COLUMNS = (
    "method", "structure", "criterion", "scope", "schedule", "seed", "k", "phase", "sparsity",
    "units_removed",
    "test_metric", "test_loss", "val_metric", "val_loss", "seconds",
    "params", "bytes_dense", "bytes_sparse", "flops_dense", "flops", "latency_ms_b1",
    "latency_ms_b256",
)  # fmt: skip


LAYER_COLUMNS = (
    "method", "seed", "k", "layer", "weights", "sparsity", "units", "units_removed",
)  # fmt: skip


EPOCH_COLUMNS = (
    "method", "seed", "k", "epoch", "train_loss", "train_metric", "val_loss", "val_metric",
    "seconds",
)  # fmt: skip


SUMMARY_COLUMNS = (
    "method", "schedule", "k", "phase", "seeds", "sparsity", "units_removed",
    "test_metric_mean", "test_metric_std", "test_loss_mean", "test_loss_std",
    "val_metric_mean", "val_metric_std",
)  # fmt: skip


def seed_groups(results: list[dict]) -> dict[tuple, list[dict]]:
    """The rows of each (method, schedule, k, phase), one per seed, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["method"], row["schedule"], row["k"], row["phase"]), []).append(row)
    return groups


def summarize(results: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each (method, k, phase)."""
    summary = []
    for (method, schedule, k, phase), rows in seed_groups(results).items():
        entry = {"method": method, "schedule": schedule, "k": k, "phase": phase,
                 "seeds": len(rows), "sparsity": mean([r["sparsity"] for r in rows]),
                 "units_removed": mean([r["units_removed"] for r in rows])}  # fmt: skip
        for metric in ("test_metric", "test_loss", "val_metric"):
            values = [r[metric] for r in rows]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean(values), std(values)
        summary.append(entry)
    return summary


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single seed."""
    if len(values) < 2:
        return 0.0
    center = mean(values)
    return math.sqrt(sum((v - center) ** 2 for v in values) / (len(values) - 1))


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def summary_table(results: list[dict], dense: dict, metric: str = "accuracy") -> str:
    """A plain-text table: one line per method and k, one-shot and after the schedule
    (the mean ± standard deviation over seeds where there are several)."""
    summary = summarize(results)
    several = any(row["seeds"] > 1 for row in summary)
    width = 15 if several else 9

    def value(row: dict) -> str:
        text = f"{row['test_metric_mean']:.4f}"
        return text + (f" ± {row['test_metric_std']:.4f}" if several else "")

    lines = [
        f"dense test {metric} {dense['test_metric']:.4f}",
        f"{'method':>8} {'k':>5} {'sparsity':>8} {'units':>6} {'one-shot':>{width}} "
        f"{'final':>{width}}",
    ]
    by_cell: dict[tuple, dict] = {}
    for row in summary:
        by_cell.setdefault((row["method"], row["k"]), {})[row["phase"]] = row
    for (method, k), phases in by_cell.items():
        final = phases["finetuned"]
        lines.append(
            f"{method:>8} {k:>5g} {final['sparsity']:>8.4f} {final['units_removed']:>6.3f}"
            f" {value(phases['oneshot']):>{width}} {value(final):>{width}}"
        )
    return "\n".join(lines)


TEXT_COLUMNS = ("method", "structure", "criterion", "scope", "schedule", "phase")


def read_results(path: Path) -> list[dict]:
    """``results.csv`` with numbers as numbers (empty cells stay empty strings)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in TEXT_COLUMNS and value:
                    row[key] = float(value)
            rows.append(renamed(row))
    return rows


def renamed(record: dict) -> dict:
    """A row or record stored before tasks other than classification, whose metric
    columns were named for accuracy, under today's names (in place)."""
    for split in ("train", "val", "test"):
        for suffix in ("", "_mean", "_std"):
            if f"{split}_accuracy{suffix}" in record:
                record[f"{split}_metric{suffix}"] = record.pop(f"{split}_accuracy{suffix}")
    return record


def mean_dense(records: list[dict]) -> dict:
    """The dense figures averaged over seeds (the record itself for one seed)."""
    if len(records) == 1:
        return records[0]
    keys = ("test_metric", "test_loss", "val_metric", "val_loss")
    return {key: sum(r[key] for r in records) / len(records) for key in keys}
