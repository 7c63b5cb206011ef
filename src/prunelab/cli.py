"""The command line: parse, then call the API. Its options are the config
dataclasses' settings (``prunelab.options``); what they mean is the API's."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from prunelab import __version__
from prunelab.budget import answers_table, budget_settings, budget_study, budget_values
from prunelab.data import DataError
from prunelab.export import CODEBOOK_LR, ENTROPY_CODERS, EXPORT_FORMS, export_cell
from prunelab.options import Setting
from prunelab.report import write_report
from prunelab.results import summary_table
from prunelab.rundir import holder
from prunelab.study import CellsFailedError, run_study
from prunelab.study_config import cell_states, every_setting, from_values, open_run
from prunelab.sweep import read_sweep, sweep_studies
from prunelab.train import fast_cpu_math


def _add_settings(p: argparse.ArgumentParser, settings: Sequence[Setting]) -> None:
    """One option per setting; an option not given is absent from the namespace."""
    for s in settings:
        common = {"dest": s.path, "default": argparse.SUPPRESS, "help": s.help.replace("%", "%%")}
        names = [f"--{flag}" for flag in (s.flag, *s.aliases)]
        if s.is_flag:
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
            continue
        metavar = s.flag.upper().replace("-", "_")
        if s.choices is not None and not s.is_list:
            metavar = "{" + ",".join(s.choices) + "}"
        p.add_argument(*names, type=_parser_of(s), metavar=metavar, **common)


def _parser_of(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _given(args: argparse.Namespace, settings: Sequence[Setting]) -> dict[str, Any]:
    given = vars(args)
    return {s.path: given[s.path] for s in settings if s.path in given}


def study(args: argparse.Namespace) -> int:
    """train once, prune at every k by every method, fine-tune, tabulate and plot

    Train the dense model once (reused on reruns), prune it at every k by every method,
    evaluate, fine-tune each pruned network with its mask held, and write config.json,
    results.csv, layers.csv, epochs.csv and figures into the run directory. Finished
    cells are stored and not recomputed when the command is rerun.
    """
    settings = every_setting()
    given = _given(args, settings)
    runs = sweep_studies(read_sweep(args.config, settings), given) if args.config else [given]
    worst = 0
    for i, values in enumerate(runs, 1):
        config, options = from_values(values)
        if len(runs) > 1:
            names = f"{config.dataset}, {config.model.name}, {config.schedule.name}"
            print(f"study {i} of {len(runs)}: {names} -> {options.out}")
        result = run_study(config, options)
        html_path, _ = write_report(result.paths.root)
        print(summary_table(result.results, result.dense, config.metric.name))
        print(f"results: {result.paths.results}\nfigures: {result.paths.figures}\n"
              f"report: {html_path}")  # fmt: skip
        worst = max(worst, _report_failures(result.failures))
    return worst


def _study_arguments(p: argparse.ArgumentParser) -> None:
    _add_settings(p, every_setting())
    p.add_argument(
        "--config", type=Path, metavar="SWEEP_TOML",
        help="read settings and the grid from a TOML file (keys: these options' names; "
        "lists of datasets, models or schedules run one study each); options given here "
        "override it",
    )  # fmt: skip


def _report_failures(failures: list[dict]) -> int:
    if not failures:
        return 0
    print(f"prunelab: {len(failures)} cell(s) failed; rerun to retry them:", file=sys.stderr)
    for f in failures:
        print(f"  {f['method']} k={f['k']:g} seed {f['seed']}: {f['error']}", file=sys.stderr)
    return 1


def budget(args: argparse.Namespace) -> int:
    """find the largest k within a tolerance of the dense metric

    For each criterion and schedule, find the largest fraction k of weights or units
    that can be pruned while the validation metric stays within --max-drop of the
    dense model's (accuracy: in points; perplexity: lower is better), by bracketing
    (k = 0.5, 0.75, 0.875, ...) and bisection to --resolution. Prints the answer on the
    test set, writes budget.json and the pruned model of each answer into the run
    directory. Probes are study cells: the base model and finished probes are reused.
    """
    config, options, search = budget_values(_given(args, budget_settings()))
    answers = budget_study(config, options, **asdict(search))
    print(answers_table(answers))
    for answer in answers:
        print(answer.sentence)
        if answer.model_file:
            print(f"  pruned model: {answer.model_file}")
    print(f"answers: {options.out / 'budget.json'}")
    return 0


def export(args: argparse.Namespace) -> int:
    """write the pruned model of one (method, k) of a study to a file

    Export the fine-tuned model of one method and k of a finished study: 'sparse' keeps
    only non-zero weights (CSR, uint8 column gaps, safetensors); 'compact' removes
    pruned units and stores a smaller dense model; 'onnx' writes the compacted model as
    ONNX (needs prunelab[onnx]). With --codebook, --codebook-epochs and --entropy the
    sparse form goes through Deep Compression's weight sharing, trained quantization
    and Huffman coding. The file is reloaded and its size, parameter count and test
    metric (classification: accuracy) printed.
    """
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    result = export_cell(
        args.run_dir, args.method, args.k, args.form, args.output, dtype=dtype,
        codebook_bits=args.codebook, codebook_epochs=args.codebook_epochs,
        codebook_lr=args.codebook_lr,
        entropy=args.entropy, data_dir=args.data_dir, seed=args.seed,
    )  # fmt: skip
    print(f"{result.path}: {result.bytes:,} bytes, {result.params:,} non-zero parameters, "
          f"test {result.metric} {result.test_metric:.4f}")  # fmt: skip
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    _run_dir_argument(p)
    p.add_argument("--method", required=True, help="a method of the study, e.g. unit or weight:obs")
    p.add_argument("--k", type=float, required=True, help="a k of the study")
    p.add_argument("--format", dest="form", default="sparse", choices=EXPORT_FORMS,
                   help="sparse (default), compact or onnx")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="how values are stored (default: float32); onnx at float16 "
                        "stores its weights as float16 and still computes in float32")  # fmt: skip
    p.add_argument("--codebook", type=int, metavar="BITS",
                   help="sparse only: share each layer's values through a k-means codebook "
                        "of 2**BITS - 1 values (1 to 8), as in Deep Compression")  # fmt: skip
    p.add_argument("--codebook-epochs", type=int, default=0, metavar="N",
                   help="with --codebook: first train the centroids for N epochs on the "
                        "study's data, with Adam, at the fine-tuning's batch size and "
                        "schedule (default: 0)")  # fmt: skip
    p.add_argument(
        "--codebook-lr",
        type=float,
        metavar="LR",
        help=f"learning rate of the centroids' training (default: {CODEBOOK_LR:g})",
    )
    p.add_argument("--entropy", choices=ENTROPY_CODERS,
                   help="sparse only: Huffman code the column gaps and the codebook's codes "
                        "(default: none)")  # fmt: skip
    p.add_argument("--seed", type=int, help="which seed's model, of a study of several "
                   "(default: its first)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    p.add_argument("--data-dir", type=Path, help="folder of the dataset's IDX files")


def report(args: argparse.Namespace) -> int:
    """write a study's report.html and report.md

    Write RUN_DIR/report.html (one self-contained file, figures embedded) and
    RUN_DIR/report.md from a study's run directory: its configuration, the largest k
    per method within {max_drop} of the dense validation metric (with its test metric),
    the figures and the results table, and RUN_DIR/answers.json. prunelab study writes
    them at the end of every run.
    """
    html_path, md_path = write_report(args.run_dir)
    print(f"{html_path}\n{md_path}")
    return 0


def status(args: argparse.Namespace) -> int:
    """list a study's finished, pending and failed cells

    List every cell of the study in RUN_DIR (from its config.json) as finished, failed
    (with its error) or pending, and whether a study holds the directory now.
    """
    paths, config = open_run(args.run_dir)
    counts = {"finished": 0, "failed": 0, "pending": 0}
    for cell in cell_states(paths, config):
        counts[cell.state] += 1
        error = f": {cell.error}" if cell.error else ""
        print(f"{cell.state:>9}  {cell.method} k={cell.k:g} seed {cell.seed}{error}")
    running = holder(paths.root)
    print(", ".join(f"{n} {state}" for state, n in counts.items())
          + (f"; running: {running}" if running else ""))  # fmt: skip
    return 0


def _run_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="the study's run directory")


# Each command: what it runs (its docstring: help line, blank line, description), its arguments.
COMMANDS = {
    "study": (study, _study_arguments),
    "budget": (budget, lambda p: _add_settings(p, budget_settings())),
    "export": (export, _export_arguments),
    "report": (report, _run_dir_argument),
    "status": (status, _run_dir_argument),
}


class _Parser(argparse.ArgumentParser):
    """A mistake on the command line is one line that points at the help, not the help's
    whole usage (forty lines for study) above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = _Parser(
        prog="prunelab",
        description="How much of a trained network can be pruned, by which criterion?",
    )
    p.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (run, add_arguments) in COMMANDS.items():
        line, _, text = (inspect.getdoc(run) or "").partition("\n\n")  # none under -OO
        tolerance = "the metric's default tolerance (1 point of accuracy)"
        description = " ".join(text.split()).replace("{max_drop}", tolerance)
        commands[name] = sub.add_parser(name, help=line, description=description)
        add_arguments(commands[name])
    return p, commands


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return _build()[1]


def in_flags(message: str) -> str:
    """``message`` (library errors name settings in backquotes) with each setting
    replaced by the option that sets it."""
    flags = {s.path: f"--{s.flag}" for s in every_setting() + budget_settings()}
    return re.sub(r"`([\w.]+)`", lambda m: flags.get(m[1], m[1]), message)


def main(argv: list[str] | None = None) -> int:
    args = _build()[0].parse_args(sys.argv[1:] if argv is None else list(argv))
    fast_cpu_math()
    try:
        return COMMANDS[args.command][0](args)
    except (ValueError, DataError, OSError) as err:
        print(f"prunelab: error: {in_flags(str(err))}", file=sys.stderr)
        return 2
    except CellsFailedError as err:
        return _report_failures(err.failures)
    except KeyboardInterrupt:
        print("prunelab: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
