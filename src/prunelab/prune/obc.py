"""Exact Optimal Brain Compression (Frantar and Alistarh 2022): greedy OBS, one weight
at a time, in every row of a layer.

Each row removes the kept weight q of least w_q^2 / [H^-1]_qq, corrects the others
(w -= w_q / [H^-1]_qq * H^-1[:, q]) and downdates its own inverse Hessian
(H^-1 -= H^-1[:, q] H^-1[q, :] / [H^-1]_qq), so every choice sees every earlier
correction. Done naively that is a d x d update per removal and row, in
memory-bound steps. Here the downdates are gathered: the last ``BLOCK`` removals are
the columns of U (the current inverse is A - U U^T, and its column q costs one small
product), and every ``BLOCK`` removals A takes them all in one batched matrix
product, which runs near the CPU's peak. A row's A shrinks to its kept places now
and then (``COMPACT``), so the work per row is about d^3 / 3 multiply-adds, d
counting only the inputs that are not zero on all the calibration data: those are
set apart and merged back by score (``_keep_uncoupled_apart``).

Units are simpler: every row loses the same columns, so one inverse serves all rows
(``greedy_units``).

The choice is made in float32, and the kept weights are then re-solved exactly in
float64 (``obs.solve_rows``); the tests check the choices against the paper's
algorithm written plainly in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunelab.prune.nm import NM

ONE_AT_A_TIME = 0  # the solver_rounds of exact OBC: every removal is its own round
BLOCK = 32  # removals gathered into one update of each row's inverse
COMPACT = 0.75  # a row's inverse shrinks to its kept places once fewer than this remain
MEMORY = 2**28  # bytes of the rows' inverses: sets how many rows go together (more was
# slower: fewer rows per chunk keep more of each step's work in cache)
DTYPE = torch.float32
ALIGN = 16  # the inverses' widths are padded to a multiple of this many floats: one of odd
# width takes the batched products here about twice as long


def greedy_keep(
    w: torch.Tensor, h_inv: torch.Tensor, remove: int, pattern: NM | None = None,
    shape: torch.Size | None = None,
) -> torch.Tensor:  # fmt: skip
    """Which weights of each row of ``w`` [rows, d] survive exact greedy OBS.

    ``remove`` weights leave every row, or, with an N:M ``pattern`` (of a weight of
    ``shape``), M - N of every group: a weight is then a candidate only while its group
    keeps more than N.
    """
    rows, d = w.shape
    group = None
    if rows == 0:
        return torch.ones_like(w, dtype=torch.bool)
    if pattern is not None:
        group = torch.empty(d, dtype=torch.long, device=w.device)
        group[pattern.columns(shape).to(w.device)] = torch.arange(d, device=w.device) // pattern.m
        remove = d - d // pattern.m * pattern.n
    else:
        alone = _uncoupled(h_inv)
        if alone.any():
            return _keep_uncoupled_apart(w, h_inv, remove, alone)
    order, _ = _greedy(w, h_inv, remove, group, pattern)
    return torch.ones_like(w, dtype=torch.bool).scatter_(1, order, False)


def _uncoupled(h_inv: torch.Tensor) -> torch.Tensor:
    """The inputs whose row and column of the inverse Hessian are zero off the diagonal:
    inputs that are zero on all the calibration data (an image's border, a dead ReLU)
    give such a row and column, and torch's inverse keeps those zeros exact."""
    off = h_inv.ne(0)
    off.diagonal().zero_()
    return ~(off.any(0) | off.any(1))


def _keep_uncoupled_apart(w, h_inv, remove, alone):
    """``greedy_keep`` for a Hessian with uncoupled inputs, choosing exactly what it
    chooses in less time: the greedy runs on the coupled inputs only.

    Removing an uncoupled weight changes no other weight and no other column of the
    inverse, and no removal changes its score (w_j^2 / [H^-1]_jj). So the full greedy
    is the coupled greedy's sequence merged with the uncoupled weights in order of
    score, each step taking the smaller head (ties: the lower column, as argmin). The
    cost falls with the cube of the inputs left: the default study's first layer reads
    180 always-zero pixels of its 784.
    """
    coupled, alone = (~alone).nonzero()[:, 0], alone.nonzero()[:, 0]
    steps = min(remove, len(coupled))
    order, picked = w.new_empty(len(w), 0, dtype=torch.long), w.new_empty(len(w), 0, dtype=DTYPE)
    if steps:
        order, picked = _greedy(w[:, coupled], h_inv[coupled][:, coupled], steps, None, None)
        order = coupled[order]
    pivots = h_inv.diagonal()[alone].to(DTYPE)
    w_alone = w[:, alone].to(DTYPE)  # scores as the full greedy computes them
    if not ((pivots > 0).all() and torch.isfinite(pivots).all() and torch.isfinite(w_alone).all()):
        raise torch.linalg.LinAlgError("a pivot of the inverse Hessian fell to zero or below")
    scores = w_alone * (w_alone / pivots)
    alone_keys, rank = _keys(scores, alone.expand_as(scores)).sort(1)
    # the uncoupled weights taken before each coupled removal, and so each one's place
    before = torch.searchsorted(alone_keys, _keys(picked, order).cummax(1).values)
    place = torch.arange(1, steps + 1, device=w.device) + before
    taken = (place <= remove).sum(1, keepdim=True)  # coupled removals among the first
    keep = torch.ones_like(w, dtype=torch.bool)
    keep.scatter_(1, order, torch.arange(steps, device=w.device) >= taken)
    keep.scatter_(1, alone[rank], torch.arange(len(alone), device=w.device) >= remove - taken)
    return keep


def _keys(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(score, column) as one int64 that orders as argmin does: a non-negative float32's
    bits order as its value (a score, w * (w / pivot) with pivot > 0, is never -0.0),
    and the column breaks ties."""
    bits = scores.float().contiguous().view(torch.int32).long()
    return bits << 32 | columns


def _greedy(w, h_inv, remove, group, pattern):
    """Each row's removals in the order exact greedy OBS makes them, and their scores:
    two [rows, remove] tensors, the rows taken in chunks that fit ``MEMORY``.

    The inputs are padded to an ``ALIGN``ed width with places that count as removed
    (a zero weight, a unit inverse, never chosen)."""
    rows, d = w.shape
    width = _aligned(d)
    chunk = max(1, MEMORY // (width * width * torch.finfo(DTYPE).bits // 8))
    buffer = torch.empty(min(chunk, rows) * width * width, dtype=DTYPE, device=w.device)
    h_inv = F.pad(h_inv.to(DTYPE), (0, width - d, 0, width - d))
    h_inv.diagonal()[d:] = 1.0
    w = F.pad(w.to(DTYPE), (0, width - d))
    if group is not None:
        group = F.pad(group, (0, width - d))
    parts = [_greedy_chunk(w[start: start + chunk], d, h_inv, remove, group, pattern, buffer)
             for start in range(0, rows, chunk)]  # fmt: skip
    return torch.cat([o for o, _ in parts]), torch.cat([p for _, p in parts])


def _greedy_chunk(w, d, h_inv, remove, group, pattern, buffer):
    """The removals of each row of ``w`` (``d`` inputs, then padding), in order:
    original columns and scores."""
    rows, width = w.shape
    at = torch.arange(rows, device=w.device)
    columns = torch.arange(width, device=w.device).expand(rows, width)
    # Each row's inverse Hessian: the shared one until the first update, then the rows'
    # own, in ``buffer``; removed places stay until the next compaction, masked.
    a = h_inv.expand(rows, width, width)
    w = w.clone()
    gone = (columns >= d).clone()
    left = None  # with an N:M pattern, the weights each group keeps
    if group is not None:
        group = group.expand(rows, width)
        left = torch.full((rows, d // pattern.m), pattern.m, device=w.device)
    done, order, picked = 0, [], []
    while done < remove:
        block = min(BLOCK, remove - done)
        m = w.shape[1]
        diag = a.diagonal(dim1=1, dim2=2).masked_fill(gone, 1.0)
        penalty = torch.zeros_like(w).masked_fill_(gone, float("inf"))
        # Row q of each row's inverse, read as rows of one matrix (index_select is faster
        # than an advanced index): the shared inverse's, or those of the buffer.
        shared = a.data_ptr() != buffer.data_ptr()
        rows_of = h_inv if shared else a.view(rows * m, m)
        u, q, score = _remove_block(w, rows_of, 0 if shared else at * m, diag, penalty, block,
                                    group, left, pattern)  # fmt: skip
        order.append(columns.gather(1, q))
        picked.append(score)
        done += block
        gone = penalty > 0
        kept = d - done
        if done == remove:
            break
        if kept > COMPACT * m:
            if not shared:
                a.baddbmm_(u.transpose(1, 2), u, alpha=-1)
            else:  # the first update: from the shared inverse into the buffer
                a = torch.baddbmm(a, u.transpose(1, 2), u, alpha=-1,
                                  out=buffer[: rows * m * m].view(rows, m, m))  # fmt: skip
            continue
        # the kept places, in order, and the first removed ones up to an aligned width
        take = ~gone | (gone.cumsum(1) <= _aligned(kept) - kept)
        sel = take.nonzero()[:, 1].view(rows, _aligned(kept))
        u = u.gather(2, sel.unsqueeze(1).expand(rows, block, sel.shape[1]))
        a = _compacted(a, sel, buffer).baddbmm_(u.transpose(1, 2), u, alpha=-1)
        w, columns, gone = w.gather(1, sel), columns.gather(1, sel), gone.gather(1, sel)
        if group is not None:
            group = group.gather(1, sel)
    empty = w.new_empty(rows, 0)
    return torch.cat(order or [empty.long()], 1), torch.cat(picked or [empty], 1)


def _aligned(width: int) -> int:
    return -(-width // ALIGN) * ALIGN


def _remove_block(w, rows_of, offsets, diag, penalty, block, group, left, pattern):
    """Remove ``block`` more weights from each row of ``w``, one at a time, correcting
    ``w`` and downdating ``diag`` (the inverses' diagonals) in place; return U, whose
    columns are the downdates (the rows' inverses are now A - U U^T), and the places
    removed and their scores, [rows, block] each."""
    rows, m = w.shape
    at = torch.arange(rows, device=w.device)
    u = torch.empty(rows, block, m, dtype=w.dtype, device=w.device)  # filled step by step
    pivots, places, scores = [], [], []
    for t in range(block):
        score = torch.addcmul(penalty, w, w / diag)
        if group is not None:
            score.masked_fill_(left.gather(1, group) <= pattern.n, float("inf"))
        q = score.argmin(1, keepdim=True)
        places.append(q)
        scores.append(score.gather(1, q))
        qi = q.view(rows)
        a_q = rows_of.index_select(0, qi + offsets).unsqueeze(1)
        column = torch.baddbmm(a_q, u[at, :t, qi].unsqueeze(1), u[:, :t], alpha=-1).squeeze(1)
        pivot = column.gather(1, q)
        pivots.append(pivot)
        w.addcmul_(w.gather(1, q).div_(pivot), column, value=-1)
        u_t = torch.mul(column, pivot.rsqrt(), out=u[:, t])
        diag.addcmul_(u_t, u_t, value=-1).scatter_(1, q, 1.0)
        penalty.scatter_(1, q, float("inf"))
        if group is not None:
            left[at, group[at, qi]] -= 1
    # A pivot <= 0 (H too ill-conditioned for float32) or a non-finite column, which
    # every kept weight's correction would carry into w: checking u itself costs more.
    pivots = torch.cat(pivots, 1)
    if not ((pivots > 0).all() and torch.isfinite(pivots).all() and torch.isfinite(w).all()):
        raise torch.linalg.LinAlgError("a pivot of the inverse Hessian fell to zero or below")
    return u, torch.cat(places, 1), torch.cat(scores, 1)


def _compacted(a: torch.Tensor, sel: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Each row's inverse ``a`` [rows, m, m] on its kept places ``sel`` [rows, n], into
    ``buffer``, which may hold ``a``: row r's result, written after row r is read,
    overlaps only rows r and before. Row by row with index_select: several times
    faster here than one batched gather or advanced index."""
    rows, n = sel.shape
    out = buffer[: rows * n * n].view(rows, n, n)
    for r in range(rows):
        torch.index_select(a[r].index_select(0, sel[r]), 1, sel[r], out=out[r])
    return out


def greedy_units(
    w: torch.Tensor, h: torch.Tensor, groups: list[torch.Tensor], remove: int
) -> list[int]:
    """Exact greedy group OBS on the consumer weights ``w`` [rows, d]: the ``remove``
    units to take away, one at a time, in the order chosen.

    Every row loses the same columns, so one inverse Hessian serves them all: removing
    unit j's columns G costs sum over rows of w_G [H^-1_GG]^-1 w_G^T, then the kept
    weights and the inverse are downdated by that block (no inverse is recomputed).
    """
    h_inv, w = torch.linalg.inv(h), w.clone()
    index = torch.stack(groups).to(w.device)  # [units, size]
    alive = torch.ones(len(groups), dtype=torch.bool)
    removed: list[int] = []
    for _ in range(remove):
        live = alive.nonzero()[:, 0]
        cols = index[live]
        if cols.shape[1] == 1:  # single columns: no systems to solve
            scores = (w[:, cols[:, 0]] ** 2).sum(0) / h_inv.diagonal()[cols[:, 0]]
        else:
            blocks = h_inv[cols.unsqueeze(2), cols.unsqueeze(1)]  # [live, size, size]
            wg = w[:, cols].permute(1, 2, 0)  # [live, size, rows]
            scores = (wg * torch.linalg.solve(blocks, wg)).sum((1, 2))
        j = int(live[torch.argmin(scores.cpu())])
        g = index[j]
        step = torch.linalg.solve(h_inv[g][:, g], h_inv[g])  # [H^-1_GG]^-1 H^-1_G:
        w -= w[:, g] @ step
        h_inv -= h_inv[:, g] @ step
        alive[j] = False
        removed.append(j)
    return removed
