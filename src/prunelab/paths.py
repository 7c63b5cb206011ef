"""Every file a study run writes, relative to its run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.csv"

    @property
    def layers(self) -> Path:
        return self.root / "layers.csv"

    @property
    def summary(self) -> Path:
        """Mean and standard deviation over seeds per (method, k, phase)."""
        return self.root / "summary.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def answers(self) -> Path:
        """The report's answers as data."""
        return self.root / "answers.json"

    @property
    def budget(self) -> Path:
        return self.root / "budget.json"

    def budget_model(self, stem: str, form: str) -> Path:
        """The pruned model of a budget answer, ``form`` "compact" or "sparse"."""
        return self.root / f"{stem}.{form}.safetensors"

    @property
    def lock(self) -> Path:
        """The OS lock of the study running in the directory."""
        return self.root / ".lock"

    @property
    def holder(self) -> Path:
        """Who holds the lock, for the error a second study gets."""
        return self.root / ".holder"

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
