"""Every file a study run writes, relative to its run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class _File:
    """A fixed file of the run directory: ``paths.results`` is ``paths.root / "results.csv"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, paths: RunPaths | None, owner: type | None = None) -> Path:
        if paths is None:
            return self  # type: ignore[return-value]  # the class attribute itself
        return paths.root / self.name


@dataclass(frozen=True)
class RunPaths:
    root: Path

    config = _File("config.json")
    results = _File("results.csv")
    epochs = _File("epochs.csv")
    layers = _File("layers.csv")
    summary = _File("summary.csv")  # mean and standard deviation over seeds per (method, k, phase)
    figures = _File("figures")
    report_html = _File("report.html")
    report_md = _File("report.md")
    answers = _File("answers.json")  # the report's answers as data
    budget = _File("budget.json")
    lock = _File(".lock")  # the OS lock of the study running in the directory
    holder = _File(".holder")  # who holds the lock, for the error a second study gets

    def budget_model(self, stem: str, form: str) -> Path:
        """The pruned model of a budget answer, ``form`` "compact" or "sparse"."""
        return self.root / f"{stem}.{form}.safetensors"

    def base_model(self, base_id: str) -> Path:
        return self.root / "base" / f"{base_id}.safetensors"

    def base_record(self, base_id: str) -> Path:
        return self.root / "base" / f"{base_id}.json"

    def rewind_model(self, base_id: str, steps: int) -> Path:
        """The dense model ``steps`` optimizer steps into its training (lottery rewinding)."""
        return self.root / "base" / f"{base_id}.step{steps}.safetensors"

    def cell(self, cell_id: str) -> Path:
        return self.root / "cells" / f"{cell_id}.json"

    def cell_failure(self, cell_id: str) -> Path:
        """The error of a cell's last failed attempt (removed when it succeeds)."""
        return self.root / "cells" / f"{cell_id}.failed.json"

    def cell_model(self, cell_id: str) -> Path:
        """The pruned, fine-tuned model of a cell, in prunelab's sparse format."""
        return self.root / "cells" / f"{cell_id}.safetensors"
