"""prunelab: how much of a trained network can be pruned, by which criterion, and how
much smaller and faster is what remains.

The public API, importable from here::

    import prunelab
    masks = prunelab.prune(model, prunelab.PruneMethod("unit", "obd"), 0.5, batches=batches)
    small = prunelab.compact(model)

``prunelab.prune`` and ``prunelab.compact`` are these functions; the modules of the
same names are imported as ``from prunelab.prune.masks import Masks``.
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

from prunelab.budget import BudgetAnswer, BudgetResult, budget_study, find_budget
from prunelab.compact import CompactionError, compact
from prunelab.csr import to_csr
from prunelab.data import DataError, Dataset, Split, load_dataset
from prunelab.export import export_cell, load_sparse, save_sparse
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.onnx_format import save_onnx
from prunelab.prune import Masks, PruneMethod, prune
from prunelab.report import write_report
from prunelab.schedules import Schedule
from prunelab.semi_structured import to_semi_structured
from prunelab.study import StudyResult, run_study
from prunelab.study_config import RunOptions, Start, StudyConfig, configure
from prunelab.train import TrainConfig

__all__ = [
    "BudgetAnswer",
    "BudgetResult",
    "CompactionError",
    "DataError",
    "Dataset",
    "Masks",
    "ModelConfig",
    "PruneMethod",
    "RunOptions",
    "Schedule",
    "Split",
    "Start",
    "StudyConfig",
    "StudyResult",
    "TrainConfig",
    "__version__",
    "budget_study",
    "build_model",
    "compact",
    "configure",
    "export_cell",
    "find_budget",
    "load_dataset",
    "load_sparse",
    "prunable_layers",
    "prune",
    "run_study",
    "save_onnx",
    "save_sparse",
    "to_csr",
    "to_semi_structured",
    "write_report",
]
