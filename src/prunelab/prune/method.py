"""A pruning method: what is removed (structure), how it is ranked (criterion),
and how the removals are spread over layers (scope)."""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.options import check_choice
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.nm import NM

STRUCTURES = ("weight", "unit")
SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneMethod:
    structure: str = "weight"  # "weight": single weights; "unit": whole output units
    criterion: str = "magnitude"
    scope: str = "layer"  # "layer": each layer loses k; "global": k of all, ranked together

    def __post_init__(self) -> None:
        check_choice("structure", self.structure, STRUCTURES)
        check_choice("criterion", self.criterion, CRITERIA)
        pattern = NM.parse(self.scope)
        if pattern is None:
            check_choice("scope", self.scope, [*SCOPES, "N:M (e.g. 2:4)"])
        elif self.structure != "weight":
            raise ValueError(f"{self.scope} sparsity is a pattern of single weights: use "
                             f"weight:{self.criterion}@{self.scope}")  # fmt: skip
        if self.solver_rounds is not None and self.scope == "global":
            raise ValueError(
                f"{self.criterion} solves each layer's reconstruction on its own, so it "
                "allocates per layer: use scope 'layer' or an N:M pattern"
            )

    @classmethod
    def parse(cls, text: str, default_scope: str = "layer") -> PruneMethod:
        """Read ``STRUCTURE[:CRITERION][@SCOPE]``; the criterion defaults to magnitude."""
        text, _, scope = text.strip().partition("@")
        structure, _, criterion = text.partition(":")
        return cls(structure, criterion or "magnitude", scope or default_scope)

    @property
    def name(self) -> str:
        """``weight`` / ``unit`` for layer-wise magnitude (the seed's methods), else
        ``structure:criterion``, with ``@global`` for global scope."""
        name = (
            self.structure
            if self.criterion == "magnitude"
            else f"{self.structure}:{self.criterion}"
        )
        return name if self.scope == "layer" else f"{name}@{self.scope}"

    @property
    def pattern(self) -> NM | None:
        """The N:M pattern this method prunes to, if its scope is one."""
        return NM.parse(self.scope)

    @property
    def needs_data(self) -> bool:
        return CRITERIA[self.criterion].needs_data

    @property
    def revision(self) -> int:
        """Of the criterion's algorithm: results of an earlier one are not reused."""
        return CRITERIA[self.criterion].revision

    @property
    def solver_rounds(self) -> int | None:
        """Rounds of greedy layer-wise re-fitting, for the criteria that re-fit."""
        return CRITERIA[self.criterion].solver_rounds


def file_safe(method_name: str) -> str:
    """A method's name as part of a file name (``weight:obd@global`` -> ``weight-obd-global``)."""
    return method_name.replace(":", "-").replace("@", "-")


def check_k(k: float) -> float:
    """A pruning fraction must lie in [0, 1): k = 1 would remove everything."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"k must be a number in [0, 1), got {k!r}")
    if not 0.0 <= k < 1.0:
        raise ValueError(f"k must be in [0, 1), got {k}")
    return float(k)
