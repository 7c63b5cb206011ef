"""The command line: parse, build a config, call the API. No logic of its own."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from prunelab import __version__
from prunelab.answer import DEFAULT_MAX_DROP, points
from prunelab.budget import (
    DEFAULT_RESOLUTION,
    answers_table,
    budget_study,
    check_max_drop,
)
from prunelab.data import DATASETS, DataError
from prunelab.executors import EXECUTORS
from prunelab.export import EXPORT_FORMS, export_cell
from prunelab.models import MODELS, ModelConfig
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.method import SCOPES, STRUCTURES, PruneMethod
from prunelab.report import write_report
from prunelab.results import summary_table
from prunelab.rundir import holder
from prunelab.schedules import SCHEDULES, Schedule, describe_schedule
from prunelab.study import CellsFailedError, run_study
from prunelab.study_config import (
    RECIPES,
    RunOptions,
    StudyConfig,
    cell_states,
    open_run,
    quick,
)
from prunelab.sweep import expand, read_sweep
from prunelab.train import TrainConfig, fast_cpu_math


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _training(train: TrainConfig) -> str:
    return (
        f"{train.optimizer}, lr {train.lr:g} ({train.lr_schedule}), batch {train.batch_size}, "
        f"{train.epochs} epochs" + (", augmentation" if train.augment else "")
    )


def _plain(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _by_recipe(setting) -> str:
    """'(default: the recipe's: fast 5, seed 20)', read from the recipes themselves."""
    values = ", ".join(f"{name} {_plain(setting(config))}" for name, config in RECIPES.items())
    return f"(default: the recipe's: {values})"


QUICK = quick(StudyConfig())


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="train once, prune at every k by every method, fine-tune, tabulate and plot",
        description=(
            "Train the dense model once (reused on reruns), prune it at every k by every "
            "method, evaluate, fine-tune each pruned network with its mask held, and write "
            "config.json, results.csv, layers.csv, epochs.csv and figures into the run "
            "directory. "
            "Finished cells are stored and not recomputed when the command is rerun."
        ),
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=",".join(StudyConfig().methods),
        help=f"comma-separated STRUCTURE[:CRITERION][@SCOPE]; structures: "
        f"{', '.join(STRUCTURES)}; criteria: {', '.join(CRITERIA)}; a bare "
        "structure means magnitude (default: %(default)s)",
    )
    p.add_argument(
        "--scope",
        type=_names,
        default=PruneMethod().scope,
        help=f"comma-separated scopes for methods that name none: {', '.join(SCOPES)} "
        "(layer: every prunable layer loses k; global: k of all weights or units, ranked "
        "together, every layer keeping at least one) (default: %(default)s)",
    )
    p.add_argument(
        "--ks",
        type=_floats,
        default=",".join(f"{k:g}" for k in StudyConfig().ks),
        help="comma-separated fractions to prune, each in [0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--schedule", default=Schedule().name, choices=list(SCHEDULES),
        help="how k is reached (with the default --rounds, --ramp and --prune-every): "
        + "; ".join(describe_schedule(Schedule(name)) for name in SCHEDULES).replace("%", "%%")
        + ". Give gradual several --finetune-epochs (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=StudyConfig().seeds,
        help="repeat every cell, base model included, over this many seeds; tables give "
        "mean and std, figures a band (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--config", type=Path, metavar="SWEEP_TOML",
        help="read settings and the grid from a TOML file (keys: these options' names; "
        "lists of datasets, models or schedules run one study each); options given here "
        "override it",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=RunOptions().workers,
        help="run cells in this many local processes, the torch threads shared between "
        "them (default: %(default)s, in this process)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int,
        help="torch threads per cell (default: torch's thread count, which follows "
        "OMP_NUM_THREADS, shared between the workers; ray: 1). Results are identical across "
        "executors and worker counts for the same threads per cell",
    )  # fmt: skip
    p.add_argument(
        "--executor", default=RunOptions().executor, choices=list(EXECUTORS),
        help="; ".join(f"{name}: {e.describe}" for name, e in EXECUTORS.items())
        + " (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--ray-address",
        help="address of an existing Ray cluster, e.g. 10.0.0.1:6379 (default: start a local one)",
    )
    _add_run_options(p, default_out="runs/study")


def _add_run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by study and budget: data, model, training, where and how to run."""
    p.add_argument(
        "--dataset", default=StudyConfig().dataset,
        help="; ".join(f"{name}: {d.describe}" for name, d in DATASETS.items())
        + " (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="folder holding the dataset's four IDX files")
    p.add_argument("--no-download", action="store_true", help="never download data")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="fast",
        help="; ".join(
            f"{name}: {_training(config.train)}" + (", dropout" if config.model.dropout else "")
            for name, config in RECIPES.items()
        )
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--model", default=ModelConfig().name, choices=sorted(MODELS),
        help="; ".join(f"{name}: {m.describe}" for name, m in MODELS.items())
        + " (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--hidden", type=_ints,
        help="hidden sizes (default: "
        + "; ".join(f"{name} {','.join(map(str, m.sizes))}" for name, m in MODELS.items())
        + ")",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=int,
        help="training epochs of the dense model " + _by_recipe(lambda c: c.train.epochs),
    )  # fmt: skip
    p.add_argument(
        "--lr", type=float,
        help="peak learning rate of the dense model " + _by_recipe(lambda c: c.train.lr),
    )  # fmt: skip
    p.add_argument(
        "--lr-schedule", choices=("cosine", "constant"),
        help="learning-rate schedule of the dense model "
        + _by_recipe(lambda c: c.train.lr_schedule),
    )  # fmt: skip
    p.add_argument(
        "--batch-size",
        type=int,
        help="batch size of training and fine-tuning " + _by_recipe(lambda c: c.train.batch_size),
    )
    p.add_argument(
        "--finetune-epochs", type=int,
        help="fine-tuning epochs per cell " + _by_recipe(lambda c: c.finetune.epochs),
    )  # fmt: skip
    p.add_argument(
        "--finetune-lr",
        type=float,
        help="peak fine-tuning learning rate " + _by_recipe(lambda c: c.finetune.lr),
    )
    p.add_argument(
        "--finetune-lr-schedule", choices=("cosine", "constant"),
        help="learning-rate schedule of fine-tuning "
        + _by_recipe(lambda c: c.finetune.lr_schedule),
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=Schedule().rounds,
        help="rounds of the iterative and lottery schedules (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--ramp", type=float, default=Schedule().ramp,
        help="gradual: fraction of the fine-tuning steps over which sparsity rises to k "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--prune-every", type=int, default=Schedule().every,
        help="gradual: optimizer steps between mask updates (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--val-size",
        type=int,
        default=StudyConfig().val_size,
        help="validation images carved from the training set (default: %(default)s)",
    )
    p.add_argument(
        "--train-limit", type=int, help="use only this many training images (default: all)"
    )
    p.add_argument(
        "--calibration", type=int, default=StudyConfig().calibration_size,
        help="training images that obd, fisher, taylor, obs and obc look at (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--prune-last", action="store_true", help="prune the logits layer too")
    p.add_argument(
        "--seed",
        type=int,
        default=StudyConfig().seed,
        help="seed of initialisation, batch order and dropout (default: %(default)s)",
    )
    p.add_argument(
        "--quick", action="store_true",
        help=f"small and fast: {QUICK.train_limit:,} training images, {QUICK.train.epochs} epochs",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=Path(default_out), help="run directory (default: %(default)s)"
    )
    p.add_argument(
        "--device",
        default=RunOptions().device,
        choices=("auto", "cpu", "cuda"),
        help="where to compute (default: %(default)s)",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the pruned model of one (method, k) of a study to a file",
        description=(
            "Export the fine-tuned model of one method and k of a finished study: 'sparse' "
            "keeps only non-zero weights (CSR, uint8 column gaps, safetensors); 'compact' "
            "removes pruned units and stores a smaller dense model; 'onnx' writes the "
            "compacted model as ONNX (needs prunelab[onnx]). The file is reloaded "
            "and its size, parameter count and test accuracy printed."
        ),
    )
    p.add_argument("run_dir", type=Path, help="the study's run directory")
    p.add_argument("--method", required=True, help="a method of the study, e.g. unit or weight:obs")
    p.add_argument("--k", type=float, required=True, help="a k of the study")
    p.add_argument("--format", dest="form", default="sparse", choices=EXPORT_FORMS,
                   help="sparse (default), compact or onnx")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="how values are stored (default: float32)")  # fmt: skip
    p.add_argument("--codebook", type=int, metavar="BITS",
                   help="sparse only: share each layer's values through a k-means codebook "
                        "of 2**BITS - 1 values (1 to 8), as in Deep Compression")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    p.add_argument("--data-dir", type=Path, help="folder of the dataset's IDX files")


def export(args: argparse.Namespace) -> int:
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    result = export_cell(
        args.run_dir, args.method, args.k, args.form, args.output, dtype=dtype,
        codebook_bits=args.codebook, data_dir=args.data_dir,
    )  # fmt: skip
    print(
        f"{result.path}: {result.bytes:,} bytes, {result.params:,} non-zero parameters, "
        f"test accuracy {result.test_accuracy:.4f}"
    )
    return 0


def build_study_config(args: argparse.Namespace) -> StudyConfig:
    config = RECIPES[args.recipe]
    if args.quick:
        config = quick(config)
    model, train, finetune = config.model, config.train, config.finetune
    if args.model != model.name:
        model = ModelConfig(name=args.model)
    if args.hidden is not None:
        keep_dropout = len(model.dropout) == len(args.hidden)
        model = replace(model, hidden=args.hidden, dropout=model.dropout if keep_dropout else ())
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs)
    if args.lr is not None:
        train = replace(train, lr=args.lr)
    if args.lr_schedule is not None:
        train = replace(train, lr_schedule=args.lr_schedule)
    if args.batch_size is not None:
        train = replace(train, batch_size=args.batch_size)
        finetune = replace(finetune, batch_size=args.batch_size)
    if args.finetune_epochs is not None:
        finetune = replace(finetune, epochs=args.finetune_epochs)
    if args.finetune_lr is not None:
        finetune = replace(finetune, lr=args.finetune_lr)
    if args.finetune_lr_schedule is not None:
        finetune = replace(finetune, lr_schedule=args.finetune_lr_schedule)
    config = replace(
        config,
        dataset=args.dataset,
        val_size=args.val_size,
        train_limit=args.train_limit if args.train_limit is not None else config.train_limit,
        model=model,
        train=train,
        finetune=finetune,
        prune_last=args.prune_last,
        calibration_size=args.calibration,
        schedule=Schedule(
            getattr(args, "schedule", Schedule().name),
            rounds=args.rounds,
            ramp=args.ramp,
            every=args.prune_every,
        ),  # fmt: skip
        seed=args.seed,
    )
    if args.command != "study":
        return config
    methods = (PruneMethod.parse(m, scope).name for scope in args.scope for m in args.methods)
    return replace(config, methods=tuple(dict.fromkeys(methods)), ks=args.ks, seeds=args.seeds)


def study(args: argparse.Namespace) -> int:
    config = build_study_config(args)
    options = RunOptions(
        out=args.out, data_dir=args.data_dir, device=args.device, download=not args.no_download,
        executor=args.executor, workers=args.workers, ray_address=args.ray_address,
        threads=args.threads,
    )  # fmt: skip
    result = run_study(config, options)
    html_path, _ = write_report(result.paths.root)
    print(summary_table(result.results, result.dense))
    print(f"results: {result.paths.results}\nfigures: {result.paths.figures}\nreport: {html_path}")
    return _report_failures(result.failures)


def _report_failures(failures: list[dict]) -> int:
    if not failures:
        return 0
    print(f"prunelab: {len(failures)} cell(s) failed; rerun to retry them:", file=sys.stderr)
    for f in failures:
        print(f"  {f['method']} k={f['k']:g} seed {f['seed']}: {f['error']}", file=sys.stderr)
    return 1


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="list a study's finished, pending and failed cells",
        description=(
            "List every cell of the study in RUN_DIR (from its config.json) as finished, "
            "failed (with its error) or pending, and whether a study holds the directory now."
        ),
    )
    p.add_argument("run_dir", type=Path, help="the study's run directory")


def status(args: argparse.Namespace) -> int:
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


def _add_budget(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "budget",
        help="find the largest k within a tolerance of dense accuracy",
        description=(
            "For each criterion and schedule, find the largest fraction k of weights or "
            "units that can be pruned while validation accuracy stays within --max-drop "
            "points of the dense model's, by bracketing (k = 0.5, 0.75, 0.875, ...) and "
            "bisection to --resolution. Prints the answer on the test set, writes "
            "budget.json and the pruned model of each answer into the run directory. "
            "Probes are study cells: the base model and finished probes are reused."
        ),
    )
    p.add_argument("--structure", default="unit", choices=STRUCTURES,
                   help="prune weights or units (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--criteria", type=_names, default="magnitude",
        help=f"comma-separated criteria: {', '.join(CRITERIA)} (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--schedules", type=_names, default="oneshot",
        help=f"comma-separated schedules: {', '.join(SCHEDULES)} (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help="tolerated drop in accuracy points (default: %(default)s)")  # fmt: skip
    p.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION,
                   help="resolution of k (default: %(default)s, half a point)")  # fmt: skip
    _add_run_options(p, default_out="runs/budget")


def budget(args: argparse.Namespace) -> int:
    check_max_drop(args.max_drop)
    for name in args.schedules:
        Schedule(name)
    for criterion in args.criteria:
        PruneMethod(args.structure, criterion)
    config = build_study_config(args)
    options = RunOptions(
        out=args.out, data_dir=args.data_dir, device=args.device, download=not args.no_download
    )
    answers = budget_study(
        config, options, structure=args.structure, criteria=args.criteria,
        schedules=args.schedules, max_drop=args.max_drop, resolution=args.resolution,
    )  # fmt: skip
    print(answers_table(answers))
    for answer in answers:
        print(answer.sentence)
        if answer.model_file:
            print(f"  pruned model: {answer.model_file}")
    print(f"answers: {args.out / 'budget.json'}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a study's report.html and report.md",
        description=(
            "Write RUN_DIR/report.html (one self-contained file, figures embedded) and "
            "RUN_DIR/report.md from a study's run directory: its configuration, the largest "
            f"k per method within {points(DEFAULT_MAX_DROP)} of dense validation accuracy "
            "(with its test accuracy), the figures and the results table, and "
            "RUN_DIR/answers.json. prunelab study writes them at the end of every run."
        ),
    )
    p.add_argument("run_dir", type=Path, help="the study's run directory")


def report(args: argparse.Namespace) -> int:
    html_path, md_path = write_report(args.run_dir)
    print(f"{html_path}\n{md_path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunelab",
        description="How much of a trained network can be pruned, by which criterion?",
    )
    p.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_study(sub)
    _add_budget(sub)
    _add_export(sub)
    _add_report(sub)
    _add_status(sub)
    return p


def subcommands(p: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser (of ``p``, or of a new parser), by name."""
    return (p or parser())._subparsers._group_actions[0].choices


COMMANDS = {
    "study": study, "budget": budget, "export": export, "report": report, "status": status,
}  # fmt: skip


def sweep(p: argparse.ArgumentParser, argv: list[str], path: Path) -> int:
    """Run the studies of a sweep file, command-line options overriding it."""
    study_parser = subcommands(p)["study"]
    known = {action.dest for action in study_parser._actions} - {"help"}
    studies = expand(read_sweep(path, known))
    worst, done = 0, set()
    for defaults in studies:
        study_parser.set_defaults(**defaults)
        args = p.parse_args(argv)
        key = (args.dataset, args.model, args.schedule)
        if key in done:  # the command line overrode the file's list
            continue
        done.add(key)
        if len(studies) > 1:
            args.out = args.out / "-".join(key)
        print(f"study {len(done)} of {len(studies)}: {', '.join(key)} -> {args.out}")
        worst = max(worst, study(args))
    return worst


def in_flags(message: str) -> str:
    """``message`` (library errors name settings in backquotes) with each setting
    replaced by the option that sets it, as the parser declares them."""
    flags = {action.dest: action.option_strings[-1] for sub in subcommands().values()
             for action in sub._actions if action.option_strings}  # fmt: skip
    flags["calibration_size"] = flags["calibration"]
    return re.sub(r"`(\w+)`", lambda m: flags.get(m[1], m[1]), message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    fast_cpu_math()
    try:
        if args.command == "study" and args.config is not None:
            return sweep(p, argv, args.config)
        return COMMANDS[args.command](args)
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
