"""A pruned weight's non-zeros row by row (CSR), as ``export.save_sparse`` stores them:
the values, the gap from each value's column to the previous one's as uint8 (a gap
over 255 is bridged by explicit zero entries, as in Deep Compression: a byte a gap,
where an int32 column index would take four), and the number of entries per row.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_GAP = 255  # uint8


def encode(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR with uint8 column gaps; returns (values, gaps, entries per row)."""
    matrix = weight.detach().cpu().float().flatten(1).numpy()
    rows, columns = np.nonzero(matrix)  # row-major order
    previous = np.full_like(columns, -1)
    same_row = np.r_[False, rows[1:] == rows[:-1]]
    previous[same_row] = columns[:-1][same_row[1:]]
    gap = columns - previous
    fillers = (gap - 1) // MAX_GAP  # stored zeros that bridge gaps over MAX_GAP
    entry = np.repeat(np.arange(len(gap)), fillers + 1)
    is_real = np.r_[entry[1:] != entry[:-1], True]  # the last of each group is the entry itself
    gaps = np.where(is_real, gap[entry] - fillers[entry] * MAX_GAP, MAX_GAP)
    values = np.where(is_real, matrix[rows[entry], columns[entry]], 0.0)
    counts = np.bincount(rows[entry], minlength=matrix.shape[0])
    return values.astype(np.float32), gaps.astype(np.uint8), counts.astype(np.int32)


def decode(
    values: np.ndarray, gaps: np.ndarray, counts: np.ndarray, shape: list[int]
) -> torch.Tensor:
    """The weight of ``shape`` back from ``encode``'s arrays; a ValueError where they
    disagree or their columns fall outside the shape."""
    if not len(values) == len(gaps) == int(np.sum(counts)) or len(counts) != shape[0]:
        raise ValueError(f"{len(values)} values, {len(gaps)} gaps and {len(counts)} rows "
                         f"of {int(np.sum(counts))} entries do not fit together")  # fmt: skip
    rows, width = shape[0], int(np.prod(shape[1:]))
    matrix = np.zeros((rows, width), dtype=np.float32)
    row_of_entry = np.repeat(np.arange(rows), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # column = running sum of gaps within the row, minus one (the first gap counts from -1)
    cumulative = np.cumsum(gaps.astype(np.int64))
    row_offset = np.repeat(cumulative[starts - 1] * (starts > 0), counts) if len(gaps) else 0
    columns = cumulative - row_offset - 1
    if len(gaps) and (columns.max() >= width or columns.min() < 0):
        raise ValueError("sparse weight indices fall outside the weight's shape")
    matrix[row_of_entry, columns] = values
    return torch.from_numpy(matrix).view(shape)
