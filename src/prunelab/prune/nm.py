"""N:M sparsity: in every group of M consecutive inputs of a weight row, N weights are
kept, the pattern that sparse tensor cores run (2:4). Groups run along a Linear's
inputs, and along a convolution's input channels at each kernel position (the
weight laid out as [out, kh, kw, in], as NVIDIA's tools lay it; [out, k, in] in 1-D),
so M must divide the in-features or in-channels. A scope such as ``2:4`` names it; k is
then 1 - N/M.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

MAX_M = 256  # places within a group are stored in at most 8 bits


@dataclass(frozen=True)
class NM:
    n: int
    m: int

    @classmethod
    def parse(cls, scope: str) -> NM | None:
        """``"2:4"`` as an NM, None for any other scope; a ValueError unless 0 < N < M
        <= 256."""
        found = re.fullmatch(r"([1-9]\d*):([1-9]\d*)", scope)
        if found is None:
            return None
        n, m = int(found[1]), int(found[2])
        if not 0 < n < m <= MAX_M:
            raise ValueError(f"an N:M pattern keeps 0 < N < M <= {MAX_M} of every M weights; "
                             f"got {scope}")  # fmt: skip
        return cls(n, m)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def k(self) -> float:
        return 1 - self.n / self.m

    def check(self, k: float) -> None:
        """``k`` is this pattern's fraction (to within half a weight of a group)."""
        if abs(k - self.k) >= 0.5 / self.m:
            raise ValueError(f"{self} removes exactly {self.k:g} of the weights, one-shot; give "
                             f"k = {self.k:.4g}, not {k:g}")  # fmt: skip

    def check_grid(self, method: str, ks: tuple[float, ...], schedule: str) -> None:
        """A study of ``method`` runs one-shot at this pattern's k: said before anything
        trains."""
        if schedule != "oneshot" or any(abs(k - self.k) >= 0.5 / self.m for k in ks):
            raise ValueError(f"{method} prunes {self} one-shot, at k = {self.k:.4g} only: "
                             f"give --ks {self.k:.4g} and the oneshot schedule")  # fmt: skip

    def columns(self, shape: torch.Size | tuple[int, ...], name: str = "") -> torch.Tensor:
        """The weight's flattened columns in the order its groups run, or a ValueError
        where M does not divide the inputs the groups run along."""
        inputs = shape[1]
        if inputs % self.m:
            kind = "input channels" if len(shape) > 2 else "inputs"
            raise ValueError(f"layer {name!r} has {inputs} {kind}, not a multiple of {self.m}: "
                             f"it cannot be pruned {self}; leave it out (--ignore {name}, "
                             f"or ignore=[{name!r}])")  # fmt: skip
        if len(shape) > 2:  # a convolution's [out, in, *kernel] read as [out, *kernel, in]
            return torch.arange(math.prod(shape[1:])).view(shape[1:]).movedim(0, -1).flatten()
        return torch.arange(math.prod(shape[1:]))

    def grouped(self, rows: torch.Tensor, shape, name: str = "") -> torch.Tensor:
        """A weight's flattened ``rows`` [out, d] as its groups: [out, d / M, M]."""
        cols = self.columns(shape, name).to(rows.device)
        return rows[:, cols].reshape(rows.shape[0], -1, self.m)

    def ungrouped(self, grouped: torch.Tensor, shape) -> torch.Tensor:
        """``grouped`` back to the weight's flattened rows [out, d]."""
        cols = self.columns(shape).to(grouped.device)
        rows = torch.empty(grouped.shape[0], cols.numel(), dtype=grouped.dtype,
                           device=grouped.device)  # fmt: skip
        rows[:, cols] = grouped.reshape(grouped.shape[0], -1)
        return rows

    def keep(self, score: torch.Tensor, name: str = "") -> torch.Tensor:
        """The N highest scores of every group (``score`` shaped like the weight), ties
        by position."""
        grouped = self.grouped(score.flatten(1), score.shape, name)
        order = torch.argsort(grouped, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(grouped, dtype=torch.bool)
        keep.scatter_(-1, order[..., : self.n], True)
        return self.ungrouped(keep, score.shape).view_as(score)

    def lowest(self, score: torch.Tensor, shape, count: int) -> torch.Tensor:
        """The flattened columns of the ``count`` lowest scores of every group of each row
        of ``score`` [out, d]: [out, groups x count]."""
        cols = self.columns(shape).to(score.device)
        grouped = self.grouped(score, shape)
        within = torch.argsort(grouped, dim=-1, stable=True)[..., :count]
        starts = torch.arange(grouped.shape[1], device=score.device)[:, None] * self.m
        return cols[(within + starts).reshape(score.shape[0], -1)]

    def __call__(self, scores: dict[str, torch.Tensor], k: float) -> dict[str, torch.Tensor]:
        """As an allocator: the keep-sets of every layer's scores."""
        self.check(k)
        return {name: self.keep(score, name) for name, score in scores.items()}
