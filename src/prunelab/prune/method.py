"""A pruning method: what is removed (structure) and how it is ranked (criterion)."""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.prune.criteria import CRITERIA

STRUCTURES = ("weight", "unit")
SCOPES = ("layer",)


@dataclass(frozen=True)
class PruneMethod:
    structure: str = "weight"  # "weight": single weights; "unit": whole output neurons
    criterion: str = "magnitude"
    scope: str = "layer"  # "layer": every prunable layer loses the fraction k

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(
                f"unknown structure {self.structure!r}; choose from {', '.join(STRUCTURES)}"
            )
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"unknown criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}"
            )
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose from {', '.join(SCOPES)}")

    @classmethod
    def parse(cls, text: str) -> PruneMethod:
        """Read ``weight``, ``unit`` or ``STRUCTURE:CRITERION`` (bare = magnitude)."""
        structure, _, criterion = text.strip().partition(":")
        return cls(structure=structure, criterion=criterion or "magnitude")

    @property
    def name(self) -> str:
        """The bare structure for magnitude (the seed's two methods), else both parts."""
        if self.criterion == "magnitude":
            return self.structure
        return f"{self.structure}:{self.criterion}"


def check_k(k: float) -> float:
    """A pruning fraction must lie in [0, 1): k = 1 would remove everything."""
    if not 0.0 <= k < 1.0:
        raise ValueError(f"k must be in [0, 1), got {k}")
    return float(k)
