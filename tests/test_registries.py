"""Every registry entry renders everywhere it is named, so nothing fails late; a new
criterion is one function plus one entry."""

import pytest

from prunelab.cli import subcommands
from prunelab.data import DATASETS
from prunelab.executors import EXECUTORS
from prunelab.loggers import LOGGERS
from prunelab.models import MODELS, ModelConfig, build_model
from prunelab.prune import PruneMethod
from prunelab.prune.criteria import CRITERIA, Criterion, magnitude
from prunelab.report import build_report
from prunelab.schedules import SCHEDULES, Schedule, describe_schedule
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.tasks import TASKS
from prunelab.train import TrainConfig


def every_help() -> str:
    return "\n".join(sub.format_help() for sub in subcommands().values())


def test_every_criterion_and_schedule_renders_in_help_and_descriptions():
    text = every_help()
    for name, criterion in CRITERIA.items():
        assert name in text and criterion.describe, name
        assert (criterion.score is None) == (criterion.solver_rounds is not None), name
        PruneMethod("unit", name)
    for name in SCHEDULES:
        assert name in text
        assert describe_schedule(Schedule(name))  # every placeholder has a field
    for name, model in MODELS.items():
        assert f"{name}: {model.describe}" in " ".join(text.split())
        build_model(ModelConfig(name))  # its default sizes fit its own rules
    for registry in (DATASETS, EXECUTORS, TASKS, LOGGERS):
        for name, entry in registry.items():
            assert f"{name}: {entry.describe}" in " ".join(text.split()), name


def test_a_new_criterion_is_one_function_and_one_entry(tiny_data_dir, tmp_path, monkeypatch):
    def toy(ctx):
        """Magnitude, reversed: the largest weights go first."""
        return {name: -score for name, score in magnitude(ctx).items()}

    monkeypatch.setitem(CRITERIA, "toy", Criterion(toy, "by a toy score (largest first)"))
    assert "toy" in subcommands()["study"].format_help()
    config = StudyConfig(val_size=100, model=ModelConfig(hidden=(16,)), methods=("weight:toy",),
                         ks=(0.5,), train=TrainConfig(epochs=1))  # fmt: skip
    run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    report = build_report(tmp_path)
    assert any("chosen by a toy score (largest first)" in line for line in report.what)


def test_an_unknown_criterion_names_the_registered_ones():
    with pytest.raises(ValueError, match="choose from magnitude, random"):
        PruneMethod("weight", "nonsense")


def test_the_architecture_notes_point_at_each_registry():
    """docs/ARCHITECTURE.md names the file and line where each registry starts."""
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    text = (root / "docs" / "ARCHITECTURE.md").read_text()
    references = re.findall(r"`(src/prunelab/[\w/]+\.py):(\d+)` `(\w+)`", text)
    assert len(references) == 10
    for path, line, name in references:
        line_text = (root / path).read_text().splitlines()[int(line) - 1]
        assert line_text.startswith(name), f"{name} moved: update docs/ARCHITECTURE.md"
