"""Where a study reports as it trains: one entry of ``LOGGERS`` per kind.

The run directory's CSV files (``epochs.csv``, ``layers.csv``, ``results.csv``) are
always written; ``--log tensorboard,mlflow`` also sends each training run's epochs
(losses and metrics), and each cell's per-layer sparsity and results, to TensorBoard
(``RUN_DIR/tensorboard/<run>``, read by ``tensorboard --logdir RUN_DIR/tensorboard``)
and MLflow (``$MLFLOW_TRACKING_URI``, else ``RUN_DIR/mlruns``; experiment: the run
directory's name; ``mlflow ui --backend-store-uri RUN_DIR/mlruns`` shows them). A
training run is the dense model of a seed, or one cell.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prunelab.options import check_choice


class Logger:
    """Does nothing: the CSV files say it all. Other loggers override what they send."""

    def epoch(self, phase: str, record: dict) -> None:
        """One epoch's record (``train.EpochRecord`` as a dict) of ``phase``."""

    def summary(self, values: dict[str, float]) -> None:
        """Figures of the whole run: per-layer sparsity, final metrics."""

    def close(self) -> None:
        pass


class TensorBoardLogger(Logger):
    def __init__(self, root: Path, run: str, params: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(root / "tensorboard" / run))
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in params.items()))
        self.step = 0

    def epoch(self, phase: str, record: dict) -> None:
        self.step += 1  # epochs of every round and phase, in order
        for key, value in record.items():
            if key != "epoch" and math.isfinite(value):
                self.writer.add_scalar(f"{phase}/{key}", value, self.step)

    def summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.step)

    def close(self) -> None:
        self.writer.close()


class MLflowLogger(Logger):
    def __init__(self, root: Path, run: str, params: dict):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # files in the run directory, which MLflow 3 keeps in maintenance mode
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (root / "mlruns").resolve().as_uri()
        self.client = MlflowClient(uri)
        experiment = self._experiment(root.resolve().name)
        self.run_id = self.client.create_run(experiment, run_name=run).info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])
        self.step = 0

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # created meanwhile by another worker process
            return self.client.get_experiment_by_name(name).experiment_id

    def epoch(self, phase: str, record: dict) -> None:
        self.step += 1
        for key, value in record.items():
            if key != "epoch" and math.isfinite(value):
                self.client.log_metric(self.run_id, f"{phase}/{key}", value, step=self.step)

    def summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key.replace(":", "_"), value, step=self.step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


@dataclass(frozen=True)
class LoggerKind:
    """A registered logger: how to open one for a training run, and what it needs."""

    open: Callable[[Path, str, dict], Logger]
    describe: str
    package: str | None = None  # the module it imports, if not installed with prunelab


LOGGERS: dict[str, LoggerKind] = {
    "csv": LoggerKind(lambda *_: Logger(), "the run directory's CSV files only (always written)"),
    "tensorboard": LoggerKind(TensorBoardLogger, "TensorBoard event files under "
                              "RUN_DIR/tensorboard (prunelab[log])", "tensorboard"),
    "mlflow": LoggerKind(MLflowLogger, "MLflow runs, at $MLFLOW_TRACKING_URI or RUN_DIR/mlruns "
                         "(prunelab[log])", "mlflow"),
}  # fmt: skip


def check_loggers(names: Sequence[str]) -> None:
    """Every name is a logger whose package is installed, or a ValueError saying so
    before anything trains."""
    for name in names:
        check_choice("logger", name, LOGGERS)
        package = LOGGERS[name].package
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(f"--log {name} needs the {package} package: pip install "
                             "'prunelab[log]'")  # fmt: skip


class Loggers(Logger):
    """Every chosen logger of one training run, as one."""

    def __init__(self, names: Sequence[str], root: Path, run: str, params: dict):
        self.loggers = [LOGGERS[name].open(root, run, params) for name in names]

    def epoch(self, phase: str, record: dict) -> None:
        for logger in self.loggers:
            logger.epoch(phase, record)

    def summary(self, values: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.summary(values)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def of(self, phase: str) -> Callable:
        """A ``train(log=...)`` callback that sends each epoch as ``phase``."""
        return lambda record: self.epoch(phase, asdict(record))
