"""The study's figures, drawn from its results rows: measured points joined by
straight lines (no curve fitting), accuracy on a [0, 1] axis, a loss or a perplexity on
a log axis.

Figures are built as ``matplotlib.figure.Figure`` objects, so importing this module
leaves pyplot and its backend alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from prunelab.prune.method import file_safe
from prunelab.results import mean, std
from prunelab.tasks import Metric

PHASE_STYLE = {
    "oneshot": ("--", "one-shot"),
    "finetuned": ("-", "fine-tuned"),
    "reinit": (":", "same mask, random reinit"),
}


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        path = stem.with_suffix(suffix)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    return written


def metric_vs_k(
    results: list[dict], dense: dict, column: str, name: str, stem: Path, *, unit_range: bool
) -> list[Path]:
    """The ``column`` ('metric' or 'loss') of the test set against k, every method on one
    axes, labelled ``name``; on [0, 1] for ``unit_range``, else on a log axis for positive
    values. Over several seeds: the mean, and a band of one standard deviation."""
    series: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in results:
        series[(row["method"], row["phase"])][row["k"]].append(row[f"test_{column}"])
    methods = list(dict.fromkeys(method for method, _ in series))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for (method, phase), by_k in series.items():
        ks = sorted(by_k)
        means = [mean(by_k[k]) for k in ks]
        style, label = PHASE_STYLE[phase]
        x = [100 * k for k in ks]
        ax.plot(x, means, style, marker="o", color=colors[method], label=f"{method}, {label}")
        if any(len(values) > 1 for values in by_k.values()):
            spread = [std(by_k[k]) for k in ks]
            low = [m - s for m, s in zip(means, spread, strict=True)]
            high = [m + s for m, s in zip(means, spread, strict=True)]
            ax.fill_between(x, low, high, color=colors[method], alpha=0.15, linewidth=0)
    ax.axhline(dense[f"test_{column}"], color="grey", linestyle=":", label="dense")
    ax.set_xlabel("k: fraction of weights or units pruned (%)")
    ax.set_ylabel(f"test {name}")
    if unit_range:
        ax.set_ylim(0, 1)
    elif all(v > 0 for by_k in series.values() for vs in by_k.values() for v in vs):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Test {name} after pruning")
    return _save(fig, stem)


def metric_per_epoch(epochs: list[dict], method: str, metric: Metric, stem: Path) -> list[Path]:
    """The validation metric through fine-tuning, one line per k (epoch 0: just pruned)."""
    series: dict[float, list[tuple[int, float]]] = defaultdict(list)
    for row in epochs:
        if row["method"] == method:
            series[row["k"]].append((row["epoch"], row["val_metric"]))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    for i, (k, points) in enumerate(sorted(series.items())):
        points.sort()
        ax.plot(
            [e for e, _ in points],
            [a for _, a in points],
            marker="o",
            color=cmap(i / max(1, len(series) - 1)),
            label=f"k = {k:g}",
        )
    ax.set_xlabel("fine-tuning epoch (0 = right after pruning)")
    ax.set_ylabel(f"validation {metric.name}")
    if metric.percent:
        ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"Fine-tuning with masks held: {method}")
    return _save(fig, stem)


def deployment_vs_k(
    results: list[dict], columns: dict[str, str], title: str, stem: Path
) -> list[Path]:
    """One panel per column (log scale) of the fine-tuned rows against k, per method."""
    rows = [r for r in results if r["phase"] == "finetuned" and r.get(next(iter(columns)))]
    if not rows:
        return []
    fig = Figure(figsize=(5 * len(columns), 4))
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (column, label) in zip(axes, columns.items(), strict=True):
        for i, method in enumerate(methods):
            mine = [r for r in rows if r["method"] == method and r.get(column) not in (None, "")]
            points = sorted((r["k"], float(r[column])) for r in mine)
            ax.plot([100 * k for k, _ in points], [v for _, v in points], "-o",
                    color=f"C{i}", label=method)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("k (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(title)
    return _save(fig, stem)


def study_figures(
    results: list[dict], epochs: list[dict], dense: dict, folder: Path, metric: Metric
) -> list[Path]:
    written = metric_vs_k(results, dense, "metric", metric.name, folder / f"{metric.name}_vs_k",
                          unit_range=metric.percent)  # fmt: skip
    written += metric_vs_k(results, dense, "loss", "loss", folder / "loss_vs_k", unit_range=False)
    # size, latency and epochs: the first seed's (the others would draw over it)
    first = min(row["seed"] for row in results)
    results = [row for row in results if row["seed"] == first]
    epochs = [row for row in epochs if row["seed"] == first]
    written += deployment_vs_k(
        results,
        {
            "params": "non-zero parameters",
            "bytes_sparse": "bytes, sparse file",
            "flops": "FLOPs per sample, deployable form",
        },
        "Size and work after pruning",
        folder / "size_vs_k",
    )
    written += deployment_vs_k(
        results,
        {"latency_ms_b1": "ms per forward, batch 1", "latency_ms_b256": "ms, batch 256"},
        "Latency of the deployable form (units: compacted; weights: dense or CSR)",
        folder / "latency_vs_k",
    )
    for method in dict.fromkeys(row["method"] for row in results):
        written += metric_per_epoch(epochs, method, metric, folder / f"epochs_{file_safe(method)}")
    return written
