"""The answer to "how much can be removed?": the largest k of the grid whose validation
metric (classification: accuracy) stays within a tolerance of the dense model's, with
the test metric at that k. Choosing k on validation keeps the reported test figure from
being selected on.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.prune import PruneMethod
from prunelab.results import mean, seed_groups
from prunelab.tasks import METRICS, Metric


def largest_k_within(
    rows: list[dict], dense_val: float, max_drop: float, metric: Metric = METRICS["accuracy"]
):
    """The largest k of the grid whose validation metric is worse than dense by at most
    ``max_drop``, with its row; (None, None) if none is."""
    within = [r for r in rows if metric.within(r["val_metric"], dense_val, max_drop)]
    if not within:
        return None, None
    best = max(within, key=lambda r: r["k"])
    return best["k"], best


@dataclass(frozen=True)
class Answer:
    """How much of the network one method removes within the tolerance: k is chosen
    on the validation metric, and the test metric at that k is what is reported."""

    method: str
    schedule: str
    max_drop: float  # in the metric's units (accuracy: points)
    k: float | None  # after fine-tuning (or the schedule); None: no k of the grid is within
    k_oneshot: float | None  # the same rule, right after pruning
    at_k: float  # the k of the accuracies below: k, or the grid's smallest when k is None
    val_metric: float
    test_metric: float
    dense_val_metric: float
    dense_test_metric: float
    seeds: int
    metric: str = "accuracy"  # of prunelab.tasks.METRICS

    @property
    def sentence(self) -> str:
        what = "hidden units" if PruneMethod.parse(self.method).structure == "unit" else "weights"
        m = METRICS[self.metric]
        val = f"{m.show(self.val_metric)} vs {m.show(self.dense_val_metric)}"
        test = f"{m.show(self.test_metric)} vs {m.show(self.dense_test_metric)} dense"
        if not self.k:  # None, or only k = 0 stays within
            return (
                f"{self.method}: no k > 0 of the grid stays within {m.tolerance(self.max_drop)} "
                f"of dense validation {m.name}; k = {self.at_k:g} gives {val} on validation "
                f"(test {m.name} {test})."
            )
        after = "fine-tuning" if self.schedule == "oneshot" else f"the {self.schedule} schedule"
        without = f"up to {100 * self.k_oneshot:g}%" if self.k_oneshot else "none of the grid"
        return (
            f"{self.method}: up to {100 * self.k:g}% of the {what} can be removed, with test "
            f"{m.name} {test} after {after} (k chosen on validation: {val}; without "
            f"fine-tuning, {without})."
        )


def answer(
    method: str, rows: list[dict], dense: dict, max_drop: float | None = None,
    metric: str = "accuracy",
) -> Answer:  # fmt: skip
    """The answer for ``method`` from result rows (several seeds: averaged per k) and
    the dense model's record (several seeds: their mean, ``mean_dense``), within
    ``max_drop`` (default: the metric's, ``Metric.tolerance_for``)."""
    m = METRICS[metric]
    max_drop = m.tolerance_for(dense["val_metric"], max_drop)
    means = seed_means([r for r in rows if r["method"] == method])
    tuned = [r for r in means if r["phase"] == "finetuned"]
    oneshot = [r for r in means if r["phase"] == "oneshot"]
    if not tuned:
        raise ValueError(f"no fine-tuned results of {method!r}")
    k, row = largest_k_within(tuned, dense["val_metric"], max_drop, m)
    k_oneshot, _ = largest_k_within(oneshot, dense["val_metric"], max_drop, m)
    row = row or min(tuned, key=lambda r: r["k"])
    return Answer(
        method=method, schedule=row["schedule"], max_drop=max_drop, k=k, k_oneshot=k_oneshot,
        at_k=row["k"], val_metric=row["val_metric"], test_metric=row["test_metric"],
        dense_val_metric=dense["val_metric"], dense_test_metric=dense["test_metric"],
        seeds=row["seeds"], metric=metric,
    )  # fmt: skip


def seed_means(rows: list[dict]) -> list[dict]:
    """Validation and test metric per (method, schedule, k, phase), averaged over seeds."""
    return [
        {"method": method, "schedule": schedule, "k": k, "phase": phase, "seeds": len(group),
         **{m: mean([r[m] for r in group]) for m in ("val_metric", "test_metric")}}
        for (method, schedule, k, phase), group in seed_groups(rows).items()
    ]  # fmt: skip
