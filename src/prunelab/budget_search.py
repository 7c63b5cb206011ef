"""The search of the pruning budget: probes of k, bracketing and bisection, and the
answer they give, in the units and direction of the task's metric. ``budget`` runs it
on built-in models and on any ``nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prunelab.prune import PruneMethod
from prunelab.tasks import METRICS, Metric

K_MAX = 0.995  # the bracket stops here: a network needs something left
DEFAULT_RESOLUTION = 0.005  # of k: half a point


@dataclass(frozen=True)
class Probe:
    """One evaluated k: the metric on validation (which decides) and test (reported)."""

    k: float
    val_metric: float
    test_metric: float | None = None


@dataclass
class BudgetAnswer:
    method: str
    schedule: str
    max_drop: float  # in the metric's units (accuracy: points)
    k: float  # 0.0: nothing can be removed within the tolerance
    dense_val_metric: float
    dense_test_metric: float | None
    val_metric: float  # at k (the dense model's when k = 0)
    test_metric: float | None
    probes: list[Probe] = field(default_factory=list)
    model_file: str | None = None  # where budget_study saved the pruned model
    metric: str = "accuracy"  # of prunelab.tasks.METRICS

    @classmethod
    def of(
        cls, method: str, schedule: str, max_drop: float, best: Probe | None,
        probes: list[Probe], dense_val: float, dense_test: float | None, metric: str,
    ) -> BudgetAnswer:  # fmt: skip
        """The answer of a search: its best probe, or the dense model's figures (k = 0)."""
        return cls(
            method=method,
            schedule=schedule,
            max_drop=max_drop,
            k=best.k if best else 0.0,
            dense_val_metric=dense_val,
            dense_test_metric=dense_test,
            val_metric=best.val_metric if best else dense_val,
            test_metric=best.test_metric if best else dense_test,
            probes=probes,
            metric=metric,
        )

    @property
    def sentence(self) -> str:
        m = METRICS[self.metric]
        structure = PruneMethod.parse(self.method).structure
        what = "hidden units" if structure == "unit" else "weights"
        which = "test" if self.test_metric is not None else "validation"
        mine = self.test_metric if self.test_metric is not None else self.val_metric
        dense = self.dense_test_metric if self.test_metric is not None else None
        dense = dense if dense is not None else self.dense_val_metric
        how = f"{self.method} ({self.schedule})"
        if self.k == 0:
            lowest = min(self.probes, key=lambda p: p.k)
            return (
                f"{how}: nothing can be removed within {m.tolerance(self.max_drop)} of dense "
                f"{m.name}; even k = {lowest.k:g} gives {m.show(lowest.val_metric)} on "
                f"validation vs {m.show(self.dense_val_metric)} dense."
            )
        return (
            f"{how}: up to {100 * self.k:.2f}% of the {what} can be removed, {which} {m.name} "
            f"{m.show(mine)} vs {m.show(dense)} dense."
        )


def search(
    probe: Callable[[float], Probe],
    dense_val: float,
    max_drop: float,
    resolution: float = DEFAULT_RESOLUTION,
    metric: Metric = METRICS["accuracy"],
) -> tuple[Probe | None, list[Probe]]:
    """The largest k (to ``resolution``) whose probe's validation metric is worse than
    ``dense_val`` by at most ``max_drop`` (in the metric's direction and units).

    Bracket: k = 0.5, then halve the kept fraction (0.75, 0.875, ...) while within the
    tolerance, up to ``K_MAX``; then bisect between the last k within and the first
    outside. Returns (the best probe, or None if no k is within; every probe made).
    """
    metric.check_tolerance(max_drop)
    if not 0 < resolution < 0.5:
        raise ValueError(f"resolution must be in (0, 0.5), got {resolution}")
    probes: list[Probe] = []

    def within(k: float) -> bool:
        probes.append(probe(k))
        return metric.within(probes[-1].val_metric, dense_val, max_drop)

    low, high, best, k = 0.0, None, None, 0.5
    while high is None:
        if within(k):
            low, best = k, probes[-1]
            if k >= K_MAX:
                break
            k = min(K_MAX, round(1 - (1 - k) / 2, 4))
        else:
            high = k
    while high is not None and high - low > resolution:
        k = round((low + high) / 2, 4)
        if within(k):
            low, best = k, probes[-1]
        else:
            high = k
    return best, probes
