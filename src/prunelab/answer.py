"""The answer to "how much can be removed?": the largest k of the grid whose validation
accuracy stays within a tolerance of the dense model's, with the test accuracy at that
k. Choosing k on validation keeps the reported test accuracy from being selected on.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.prune import PruneMethod
from prunelab.results import mean, seed_groups

DEFAULT_MAX_DROP = 1.0  # accuracy points: the tolerance of `budget` and of the report's answer


def points(drop: float) -> str:
    """A tolerance in accuracy points, in words: "1 point", "0.5 points"."""
    return f"{drop:g} point" + ("" if drop == 1 else "s")


def largest_k_within(rows: list[dict], dense_val_accuracy: float, max_drop: float):
    """The largest k of the grid whose validation accuracy is within ``max_drop``
    points of dense validation accuracy, with its row; (None, None) if none is."""
    within = [r for r in rows if r["val_accuracy"] >= dense_val_accuracy - max_drop / 100]
    if not within:
        return None, None
    best = max(within, key=lambda r: r["k"])
    return best["k"], best


@dataclass(frozen=True)
class Answer:
    """How much of the network one method removes within the tolerance: k is chosen
    on validation accuracy, and the test accuracy at that k is what is reported."""

    method: str
    schedule: str
    max_drop: float  # accuracy points
    k: float | None  # after fine-tuning (or the schedule); None: no k of the grid is within
    k_oneshot: float | None  # the same rule, right after pruning
    at_k: float  # the k of the accuracies below: k, or the grid's smallest when k is None
    val_accuracy: float
    test_accuracy: float
    dense_val_accuracy: float
    dense_test_accuracy: float
    seeds: int

    @property
    def sentence(self) -> str:
        what = "hidden units" if PruneMethod.parse(self.method).structure == "unit" else "weights"
        val = f"{100 * self.val_accuracy:.2f}% vs {100 * self.dense_val_accuracy:.2f}%"
        test = f"{100 * self.test_accuracy:.2f}% vs {100 * self.dense_test_accuracy:.2f}% dense"
        if not self.k:  # None, or only k = 0 stays within
            return (
                f"{self.method}: no k > 0 of the grid stays within {points(self.max_drop)} of "
                f"dense validation accuracy; k = {self.at_k:g} gives {val} on validation "
                f"(test accuracy {test})."
            )
        after = "fine-tuning" if self.schedule == "oneshot" else f"the {self.schedule} schedule"
        without = f"up to {100 * self.k_oneshot:g}%" if self.k_oneshot else "none of the grid"
        return (
            f"{self.method}: up to {100 * self.k:g}% of the {what} can be removed, with test "
            f"accuracy {test} after {after} (k chosen on validation: {val}; without "
            f"fine-tuning, {without})."
        )


def answer(
    method: str, rows: list[dict], dense: dict, max_drop: float = DEFAULT_MAX_DROP
) -> Answer:
    """The answer for ``method`` from result rows (several seeds: averaged per k) and
    the dense model's record (several seeds: their mean, ``mean_dense``)."""
    means = seed_means([r for r in rows if r["method"] == method])
    tuned = [r for r in means if r["phase"] == "finetuned"]
    oneshot = [r for r in means if r["phase"] == "oneshot"]
    if not tuned:
        raise ValueError(f"no fine-tuned results of {method!r}")
    k, row = largest_k_within(tuned, dense["val_accuracy"], max_drop)
    k_oneshot, _ = largest_k_within(oneshot, dense["val_accuracy"], max_drop)
    row = row or min(tuned, key=lambda r: r["k"])
    return Answer(
        method=method, schedule=row["schedule"], max_drop=max_drop, k=k, k_oneshot=k_oneshot,
        at_k=row["k"], val_accuracy=row["val_accuracy"], test_accuracy=row["test_accuracy"],
        dense_val_accuracy=dense["val_accuracy"], dense_test_accuracy=dense["test_accuracy"],
        seeds=row["seeds"],
    )  # fmt: skip


def seed_means(rows: list[dict]) -> list[dict]:
    """Validation and test accuracy per (method, schedule, k, phase), averaged over seeds."""
    return [
        {"method": method, "schedule": schedule, "k": k, "phase": phase, "seeds": len(group),
         **{m: mean([r[m] for r in group]) for m in ("val_accuracy", "test_accuracy")}}
        for (method, schedule, k, phase), group in seed_groups(rows).items()
    ]  # fmt: skip
