"""Settings by name (options.py), recipe merging, sweep expansion and cell states: the
command line's logic, tested in the API."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from prunelab.cli import subcommands
from prunelab.options import apply, settings_of
from prunelab.paths import RunPaths
from prunelab.study_config import (
    RECIPES,
    RunOptions,
    Start,
    StudyConfig,
    cell_states,
    configure,
    every_setting,
    from_values,
)
from prunelab.sweep import read_sweep, sweep_studies


@dataclass(frozen=True)
class Inner:
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    hidden_detail: int = 3  # no help: not a setting


@dataclass(frozen=True)
class Outer:
    sizes: tuple[int, ...] = field(default=(1, 2), metadata={"help": "sizes", "flag": "width"})
    name: str = field(default="a", metadata={"help": "a name", "choices": ("a", "b")})
    on: bool = field(default=False, metadata={"help": "a switch"})
    inner: Inner = field(default_factory=Inner, metadata={"prefix": "inner-", "of": "inside"})
    plain: Inner = field(default_factory=Inner)  # no prefix: its settings are not exposed


def test_settings_come_from_fields_with_help_and_nested_configs_with_a_prefix():
    settings = settings_of(Outer, {"": Outer()})
    assert [(s.flag, s.path) for s in settings] == [
        ("width", "sizes"), ("name", "name"), ("on", "on"), ("inner-rate", "inner.rate"),
    ]  # fmt: skip
    help_of = {s.path: s.help for s in settings}
    assert help_of["inner.rate"] == "a rate inside (default: 0.5)"
    assert help_of["sizes"] == "sizes (default: 1,2)" and help_of["on"].endswith("(default: off)")
    two = settings_of(Outer, {"x": Outer(), "y": Outer(name="b")})
    assert [s.help for s in two if s.path == "name"] == ["a name (default: the recipe's: x a, y b)"]


def test_values_are_parsed_and_checked_as_their_field_takes_them():
    by_path = {s.path: s for s in settings_of(Outer, {"": Outer()})}
    assert by_path["sizes"].parse("4, 5,") == (4, 5)
    assert by_path["sizes"].coerce([4, 5]) == (4, 5) and by_path["inner.rate"].coerce(1) == 1.0
    assert by_path["sizes"].coerce(7) == (7,) and by_path["on"].coerce("true") is True
    for path, bad, message in [
        ("sizes", "4,x", "expected an integer, got 'x'"),
        ("sizes", [4.5], "expected an integer, got 4.5"),
        ("name", "c", "unknown name 'c'; choose from a, b"),
        ("name", 3, "expected text, got 3"),
        ("on", "yes", "expected true or false"),
        ("inner.rate", True, "expected a number"),
        ("sizes", {"a": 1}, "expected a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            by_path[path].coerce(bad)
    assert apply(Outer(), {"inner.rate": 0.1, "name": "b"}) == Outer(name="b", inner=Inner(0.1))
    with pytest.raises(ValueError, match="Inner has no setting 'speed'"):
        apply(Outer(), {"inner.speed": 1})


def test_every_study_setting_is_an_option_of_the_study_command():
    """A field given help anywhere in the configs is a flag at once (no second list)."""
    text = subcommands()["study"].parse_args(["--finetune-optimizer", "sgd", "--rewind-steps", "7"])
    config, _ = from_values({k: v for k, v in vars(text).items() if "." in k})
    assert config.finetune.optimizer == "sgd" and config.schedule.rewind_steps == 7
    flags = [s.flag for s in every_setting()]
    assert len(flags) == len(set(flags))


def test_configure_merges_a_recipe_with_settings():
    seed = RECIPES["seed"]
    assert configure() == RECIPES["fast"]
    assert configure(start=Start(recipe="seed")) == seed
    quick = configure({"train.epochs": 1}, Start(quick=True))
    assert quick.train_limit == 10_000 and quick.train.epochs == 1
    # another model starts from its own sizes: the seed recipe's dropout is not carried over
    lenet = configure({"model.name": "lenet5"}, Start(recipe="seed"))
    assert lenet.model.dropout == () and lenet.train == seed.train
    # the recipe's dropout stays for hidden sizes of its depth, and goes for any other
    assert configure({"model.hidden": (8, 8, 8, 8)}, Start("seed")).model.dropout == (
        seed.model.dropout
    )
    assert configure({"model.hidden": (8,)}, Start("seed")).model.dropout == ()
    # fine-tuning follows the training batch size unless given its own
    assert configure({"train.batch_size": 64}).finetune.batch_size == 64
    both = configure({"train.batch_size": 64, "finetune.batch_size": 32})
    assert (both.train.batch_size, both.finetune.batch_size) == (64, 32)
    scoped = configure({"methods": ("weight", "unit@layer")}, Start(scope=("layer", "global")))
    assert scoped.methods == ("weight", "unit", "weight@global")
    nm = configure({"methods": ("weight:wanda",), "ks": (0.5,)}, Start(scope=("2:4",)))
    assert nm.methods == ("weight:wanda@2:4",)  # N:M, as in a method's name


def test_from_values_splits_run_options_from_the_configuration():
    config, options = from_values({"recipe": "seed", "workers": 2, "seed": 4, "out": Path("o")})
    assert config == configure({"seed": 4}, Start(recipe="seed"))
    assert options == RunOptions(out=Path("o"), workers=2)


def test_a_sweep_expands_its_lists_and_the_command_line_overrides_them(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('dataset = ["mnist", "fashion-mnist"]\nks = [0.5, 0.9]\nfinetune_epochs = 2\n'
                    'schedule = ["oneshot", "iterative"]\nout = "s"\n')  # fmt: skip
    values = read_sweep(path, every_setting())
    assert values["ks"] == (0.5, 0.9) and values["finetune.epochs"] == 2
    path.write_text("no-download = true\nks = 0.5\n")
    assert read_sweep(path, every_setting()) == {"download": False, "ks": (0.5,)}
    studies = sweep_studies(values, {"ks": (0.7,)})
    assert [s["out"] for s in studies] == [
        Path("s/mnist-mlp-oneshot"), Path("s/mnist-mlp-iterative"),
        Path("s/fashion-mnist-mlp-oneshot"), Path("s/fashion-mnist-mlp-iterative"),
    ]  # fmt: skip
    assert all(s["ks"] == (0.7,) for s in studies)
    overridden = sweep_studies(values, {"dataset": "mnist"})
    assert [s["out"] for s in overridden] == [
        Path("s/mnist-mlp-oneshot"),
        Path("s/mnist-mlp-iterative"),
    ]
    assert sweep_studies({"ks": (0.5,)}, {}) == [{"ks": (0.5,)}]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ks = [0.5,", "is not valid TOML"),
        ("learning_rate = 3", "unknown key 'learning_rate'"),
        ('epochs = "many"', "epochs: expected an integer, got 'many'"),
        ('model = ["mlp", "resnet"]', "model: unknown model 'resnet'; choose from mlp"),
        ("ks = {a = 1}", "ks: expected a number"),
        ("ray-address = 6379", "ray-address: expected text, got 6379"),
    ],
)
def test_bad_sweep_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_sweep(path, every_setting())


def test_cell_states_follow_the_files_of_the_run_directory(tmp_path):
    config = StudyConfig(methods=("weight", "unit"), ks=(0.5,), seeds=2)
    paths = RunPaths(tmp_path)
    (paths.root / "cells").mkdir(parents=True)
    done = config.per_seed()[0]
    paths.cell(done.cell_id(*_method_k("weight", 0.5))).write_text("{}")
    failed = config.per_seed()[1]
    paths.cell_failure(failed.cell_id(*_method_k("unit", 0.5))).write_text(
        json.dumps({"error": "RuntimeError: boom"})
    )
    states = [(c.method, c.seed, c.state, c.error) for c in cell_states(paths, config)]
    assert states == [
        ("weight", 0, "finished", None), ("unit", 0, "pending", None),
        ("weight", 1, "pending", None), ("unit", 1, "failed", "RuntimeError: boom"),
    ]  # fmt: skip


def _method_k(name, k):
    from prunelab.prune import PruneMethod

    return PruneMethod.parse(name), k


def test_layer_patterns_are_settings_of_a_cell_not_of_the_base_model():
    from dataclasses import replace

    from prunelab.prune import PruneMethod

    config, method = StudyConfig(), PruneMethod("unit")
    ignoring = replace(config, ignore=("stem.*",))
    assert ignoring.base_id() == config.base_id()
    assert ignoring.cell_id(method, 0.5) != config.cell_id(method, 0.5)
    given = subcommands()["study"].parse_args(["--ignore", "stem.*,head", "--include", "stages.*"])
    from_cli, _ = from_values({k: v for k, v in vars(given).items() if k in ("ignore", "include")})
    assert from_cli.ignore == ("stem.*", "head") and from_cli.include == ("stages.*",)
