"""The notebook runs top to bottom in a fresh kernel, in its quick configuration."""

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "optimal_brain_damage.ipynb"


def test_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
    """On the real MNIST (installed with the package's data, as `make` does)."""
    monkeypatch.setenv("PRUNELAB_QUICK", "1")
    monkeypatch.setenv("PRUNELAB_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert (tmp_path / "run" / "report.html").exists()
    text = "".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )
    assert "dense: test accuracy" in text and "faster" in text
