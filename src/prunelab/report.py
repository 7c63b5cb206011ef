"""A study's results as one page a reader can send on: ``report.html`` (self-contained,
figures embedded as data URIs, nothing fetched) and ``report.md`` (figures linked).

Everything shown is read back from the run directory (``config.json``,
``results.csv``, the dense model's record, ``figures/``), so the page says what
the files say.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from prunelab.answer import Answer, answer
from prunelab.factories import is_factory
from prunelab.paths import RunPaths
from prunelab.provenance import describe
from prunelab.prune import PruneMethod
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.method import file_safe
from prunelab.prune.nm import NM
from prunelab.results import mean_dense, read_results, renamed
from prunelab.schedules import describe_schedule
from prunelab.storage import atomic_write_text
from prunelab.study_config import StudyConfig, open_run, study_cells
from prunelab.tasks import METRICS, TASKS, Metric

STRUCTURE_TEXT = {
    "weight": "single weights are set to zero (the layers keep their shape)",
    "unit": "whole neurons are removed: a hidden unit's incoming weights and bias "
    "(a channel's filter, for convolutions), so the layers become narrower",
}
SCOPE_TEXT = {
    "layer": "each prunable layer loses the fraction k",
    "global": "one ranking across all layers",
}

RESULT_COLUMNS = (
    ("method", "method"),
    ("schedule", "schedule"),
    ("seed", "seed"),
    ("k", "k"),
    ("phase", "phase"),
    ("sparsity", "weights zero"),
    ("units_removed", "units removed"),
    ("test_metric", "test {metric}"),
    ("test_loss", "test loss"),
    ("val_metric", "val {metric}"),
    ("params", "non-zero params"),
    ("bytes_sparse", "sparse file (bytes)"),
    ("flops", "FLOPs per sample"),
    ("latency_ms_b1", "ms, batch 1"),
    ("latency_ms_b256", "ms, batch 256"),
)
PERCENT = {"sparsity", "units_removed"}
METRIC_COLUMNS = {"test_metric", "val_metric"}


@dataclass(frozen=True)
class FigureEntry:
    title: str
    caption: str
    path: Path


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    note: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    title: str
    what: list[str]
    answers: list[Answer]
    rule: str  # how the answers were chosen
    config: list[tuple[str, str]]
    figures: list[FigureEntry]
    tables: list[Table]


def format_value(column: str, value, metric: Metric = METRICS["accuracy"]) -> str:
    if value == "" or value is None:
        return ""
    if column in METRIC_COLUMNS:
        return metric.show(value)
    if column in PERCENT:
        return f"{100 * value:.2f}%"
    if column in ("k", "seed"):
        return f"{value:g}"
    if column in ("params", "bytes_sparse", "flops"):
        return f"{int(value):,}"
    if column.startswith("latency"):
        return f"{value:.3f}"
    if column == "test_loss":
        return f"{value:.4f}"
    return str(value)


def _scope_text(scope: str) -> str:
    pattern = NM.parse(scope)
    if pattern is None:
        return SCOPE_TEXT[scope]
    return (f"{pattern.n} of every {pattern.m} consecutive weights along each row's inputs "
            "(a convolution's input channels at each kernel position) are kept")  # fmt: skip


def _describe_methods(config: StudyConfig) -> list[str]:
    lines = []
    for name in config.methods:
        method = PruneMethod.parse(name)
        lines.append(
            f"{method.name}: {STRUCTURE_TEXT[method.structure]}, chosen "
            f"{CRITERIA[method.criterion].describe}; {_scope_text(method.scope)}."
        )
    return lines


def _describe_data(config: StudyConfig, data: str) -> str:
    if is_factory(config.dataset):
        return (f"{data}, from your function (its file {config.data_source}); validation: "
                f"its own split, or {config.val_size:,} samples carved from training; its "
                "test split")  # fmt: skip
    return f"{data}; {config.val_size:,} held out for validation; the official test set"


def _describe_config(
    config: StudyConfig, dense: dict, provenance: list[str]
) -> list[tuple[str, str]]:
    model, metric = config.model, config.metric
    sizes = ", ".join(str(size) for size in model.sizes)
    train, tune = config.train, config.finetune
    data = config.dataset + (
        f", first {config.train_limit:,} training images" if config.train_limit else ""
    )
    return [
        ("dataset", _describe_data(config, data)),
        ("task", TASKS[config.task].describe),
        (
            "model",
            f"{model.name}, "
            + (f"hidden sizes {sizes}" if sizes else f"keyword arguments {model.kwargs or 'none'}"),
        ),  # fmt: skip
        (
            "dense training",
            f"{train.optimizer}, lr {train.lr:g} ({train.lr_schedule}), batch {train.batch_size}, "
            f"{train.epochs} epochs",
        ),
        (
            "dense model",
            f"test {metric.name} {metric.show(dense['test_metric'])}, loss "
            f"{dense['test_loss']:.4f}; validation {metric.name} "
            f"{metric.show(dense['val_metric'])}"
            + (f" (mean of {config.seeds} seeds)" if config.seeds > 1 else ""),
        ),
        (
            "fine-tuning",
            f"{tune.optimizer}, lr {tune.lr:g} ({tune.lr_schedule}), {tune.epochs} epoch(s), "
            "pruned entries held at zero",
        ),
        ("schedule", describe_schedule(config.schedule)),
        ("methods", ", ".join(config.methods)),
        ("k (fraction pruned)", ", ".join(f"{k:g}" for k in config.ks)),
        ("output layers", "pruned too" if config.prune_last else "kept dense"),
        ("seeds", ", ".join(str(c.seed) for c in config.per_seed())),
        ("computed with", "; and ".join(provenance) or "not recorded"),
    ]


def _figures(folder: Path, methods: list[str], metric: Metric) -> list[FigureEntry]:
    entries = [
        FigureEntry(f"{metric.name.capitalize()} vs k", f"Test {metric.name} per method "
                    "against the fraction pruned, right after pruning (dashed) and after "
                    "fine-tuning (solid); "
                    "the dotted line is the dense model; over several seeds, the mean with a band "
                    "of one standard deviation.", folder / f"{metric.name}_vs_k.png"),
        FigureEntry("Loss vs k", "Test loss, same lines (log scale).",
                    folder / "loss_vs_k.png"),
        FigureEntry("Size vs k", "Non-zero parameters, bytes of the sparse file and FLOPs "
                    "per sample of the deployable form (units: the compacted network; weights: "
                    "the multiply-adds of non-zero weights), after fine-tuning.",
                    folder / "size_vs_k.png"),
        FigureEntry("Latency vs k", "Forward time of the deployable form: the compacted "
                    "network for units, the faster of dense and CSR sparse for weights.",
                    folder / "latency_vs_k.png"),
    ]  # fmt: skip
    for method in methods:
        entries.append(
            FigureEntry(
                f"Fine-tuning: {method}",
                f"Validation {metric.name} per fine-tuning epoch, one line per k "
                "(epoch 0 is the network just pruned).",
                folder / f"epochs_{file_safe(method)}.png",
            )
        )
    return [entry for entry in entries if entry.path.exists()]


def build_report(run_dir: str | Path) -> Report:
    paths, config = open_run(run_dir)
    if not paths.results.exists():
        raise ValueError(f"{run_dir} holds no finished study (it has no results.csv)")
    records = [paths.base_record(c.base_id()) for c in config.per_seed()]
    missing = [str(path) for path in records if not path.exists()]
    if missing:
        raise ValueError(
            f"the dense model's record is missing ({', '.join(missing)}); rerun the study"
        )
    dense = mean_dense([renamed(json.loads(path.read_text())) for path in records])
    rows = read_results(paths.results)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    return Report(
        title=f"Pruning {config.model.name} on {config.dataset}",
        what=_describe_methods(config),
        answers=[answer(method, rows, dense, metric=config.metric.name) for method in methods],
        rule=ANSWER_RULE.format(metric=config.metric.name, tolerance=config.metric.default_words),
        config=_describe_config(config, dense, _provenance(paths, config)),
        figures=_figures(paths.figures, methods, config.metric),
        tables=_summary_tables(paths, rows, config.metric) + [_results_table(rows, config.metric)],
    )


def _provenance(paths: RunPaths, config: StudyConfig) -> list[str]:
    """What computed the cells, each distinct environment once (a resumed run may have
    moved machines); the run directory's own record where cells predate provenance."""
    seen = []
    for c, method, k in study_cells(config):
        path = paths.cell(c.cell_id(method, k))
        env = json.loads(path.read_text()).get("provenance") if path.exists() else None
        if env and describe(env) not in seen:
            seen.append(describe(env))
    stored = json.loads(paths.config.read_text()).get("provenance")
    return seen or ([describe(stored)] if stored else [])


def _results_table(rows: list[dict], metric: Metric) -> Table:
    present = {key for row in rows for key, value in row.items() if value != ""}
    columns = [(key, label.format(metric=metric.name)) for key, label in RESULT_COLUMNS
               if key in present]  # fmt: skip
    return Table(
        "results", "Results", "Every row of results.csv.", [label for _, label in columns],
        [[format_value(key, row[key], metric) for key, _ in columns] for row in rows],
    )  # fmt: skip


def _summary_tables(paths: RunPaths, rows: list[dict], metric: Metric) -> list[Table]:
    """Mean ± standard deviation over seeds, when there are several."""
    if len({row["seed"] for row in rows}) < 2 or not paths.summary.exists():
        return []
    summary = read_results(paths.summary)
    header = ["method", "schedule", "k", "phase", "seeds", f"test {metric.name}", "test loss"]
    body = [
        [r["method"], r["schedule"], f"{r['k']:g}", r["phase"], f"{r['seeds']:g}",
         f"{metric.show(r['test_metric_mean'])} ± {metric.show(r['test_metric_std'])}",
         f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f}"]
        for r in summary
    ]  # fmt: skip
    return [Table("summary", "Mean over seeds", "From summary.csv.", header, body)]


INTRO = (
    "How much of a trained network can be removed before its performance suffers? "
    "The dense network was trained once; each method then pruned a copy of it at "
    "every k (the fraction of weights, or of hidden units, removed), the copy was "
    "evaluated on the test set, fine-tuned with the pruned entries held at zero, "
    "and evaluated again."
)
ANSWER_RULE = (
    "The answer per method is the largest k of the grid whose final validation {metric} "
    "(after fine-tuning or the schedule; the mean over seeds where there are several) is "
    "within {tolerance} of the dense model's (likewise averaged). k is chosen on "
    "validation, so that the test {metric} reported at it is not selected on."
)


def to_markdown(report: Report, root: Path) -> str:
    out = [f"# {report.title}", "", INTRO, "", "## The answer", "", report.rule, ""]
    out += [f"- {a.sentence}" for a in report.answers]
    out += ["", "## What was pruned, and how", ""] + [f"- {line}" for line in report.what]
    out += ["", "## Configuration", "", "| setting | value |", "|---|---|"]
    out += [f"| {key} | {value} |" for key, value in report.config]
    out += ["", "## Figures", ""]
    for figure in report.figures:
        link = figure.path.relative_to(root).as_posix()
        out += [f"### {figure.title}", "", figure.caption, "", f"![{figure.title}]({link})", ""]
    for table in report.tables:
        out += [f"## {table.title}", "", table.note, ""]
        out.append("| " + " | ".join(table.header) + " |")
        out.append("|" + "---|" * len(table.header))
        out += ["| " + " | ".join(row) + " |" for row in table.rows]
        out.append("")
    return "\n".join(out) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child, #config td { text-align: left; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
.answer { background: #eef6ee; padding: 0.5rem 1rem; border-left: 4px solid #4a4; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def to_html(report: Report) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        f"<p>{e(INTRO)}</p>",
        "<h2>The answer</h2>",
        f"<p>{e(report.rule)}</p>",
        '<ul class="answer">'
        + "".join(f"<li>{e(a.sentence)}</li>" for a in report.answers)
        + "</ul>",
        "<h2>What was pruned, and how</h2>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in report.what) + "</ul>",
        "<h2>Configuration</h2>",
        '<table id="config">'
        + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in report.config)
        + "</table>",
        "<h2>Figures</h2>",
    ]
    for figure in report.figures:
        out.append(
            f'<figure><h3>{e(figure.title)}</h3><img src="{_data_uri(figure.path)}" '
            f'alt="{e(figure.title)}"><figcaption>{e(figure.caption)}</figcaption></figure>'
        )
    for table in report.tables:
        out += [f"<h2>{e(table.title)}</h2>", f"<p>{e(table.note)}</p>", f'<table id="{table.id}">']
        out.append("<tr>" + "".join(f"<th>{e(label)}</th>" for label in table.header) + "</tr>")
        out += [
            "<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
        ]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``answers.json`` (the answers as data)
    into ``run_dir``; return the paths of the two pages."""
    root = Path(run_dir)
    report = build_report(root)
    paths = RunPaths(root)
    html_path, md_path = paths.report_html, paths.report_md
    atomic_write_text(html_path, to_html(report))
    atomic_write_text(md_path, to_markdown(report, root))
    answers = [{**asdict(a), "sentence": a.sentence} for a in report.answers]
    atomic_write_text(paths.answers, json.dumps(answers, indent=1))
    return html_path, md_path
