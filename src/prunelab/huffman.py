"""Canonical Huffman coding of small symbols, Deep Compression's last stage.

Why Huffman: the column gaps and shared-value codes of a pruned layer are far from
uniform (a gap of 1 is much more common than one of 200), and a prefix code whose
lengths follow their counts stores them within one bit a symbol of their entropy.

Why canonical: the code is rebuilt from the code lengths alone, so a file stores one
length per symbol and no tree.

Why at most 15 bits a code (``MAX_LENGTH``): a length then fits in 4 bits, and the
decoder's table has 2**15 entries at most. The lengths come from package-merge
(Larmore and Hirschberg 1990), optimal under the limit, so they cost what Huffman's
do whenever Huffman's longest code is within it (only symbols rarer than about one
in 2**15 can make it longer).

Decoding is vectorised, with no Python step per symbol: a table gives the symbol and
the length of the code that would start at every bit, and the starts of the real
codes are then found by pointer doubling (``benchmarks/huffman.py`` times it).
"""

from __future__ import annotations

import numpy as np

MAX_LENGTH = 15


def code_lengths(counts: np.ndarray, limit: int = MAX_LENGTH) -> np.ndarray:
    """The optimal code length of each symbol of a small alphabet (a byte's 256 here; 0
    for those that never occur) under ``limit`` bits, as uint8. A lone symbol gets one
    bit, so that every code has a length."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts)
    if len(used) <= 1:
        lengths[used] = 1
        return lengths
    if len(used) > 2**limit:
        raise ValueError(f"{len(used)} symbols do not fit codes of at most {limit} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_weights, leaves = counts[order], np.eye(len(order), dtype=np.int64)
    weights, members = leaf_weights, leaves  # an item: its weight, how often it holds each leaf
    for _ in range(limit - 1):  # package pairs of the deeper list, merge them with the leaves
        pairs = len(weights) // 2 * 2
        weights = np.concatenate([leaf_weights, weights[:pairs:2] + weights[1:pairs:2]])
        members = np.concatenate([leaves, members[:pairs:2] + members[1:pairs:2]])
        merged = np.argsort(weights, kind="stable")
        weights, members = weights[merged], members[merged]
    # a symbol's length is how often it sits in the 2n - 2 lightest items of the last list
    lengths[order] = members[: 2 * len(order) - 2].sum(0)
    return lengths


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(symbols in code order, how many of the codes of the longest length each one's
    code begins, that length); a ValueError where the lengths cannot form a prefix code."""
    lengths = np.asarray(lengths, dtype=np.int64)
    symbols = np.flatnonzero(lengths)
    if not len(symbols):
        raise ValueError("the code has no symbols")
    order = symbols[np.lexsort((symbols, lengths[symbols]))]  # by length, then symbol
    top = int(lengths.max())
    span = np.left_shift(1, top - lengths[order])  # the codes under each one, at top bits
    if span.sum() > 2**top:
        raise ValueError("the code lengths do not form a prefix code")
    return order, span, top


def encode(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each symbol's canonical code in turn, one bit per uint8 (``np.packbits`` stores
    them); a ValueError for a symbol without a code."""
    symbols = np.asarray(symbols, dtype=np.intp)
    if not len(symbols):
        return np.zeros(0, dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    if symbols.max() >= len(lengths) or not lengths[symbols].all():
        raise ValueError("a symbol has no code")
    order, span, top = _canonical(lengths)
    left = np.zeros(len(lengths), dtype=np.int64)
    left[order] = np.cumsum(span) - span  # canonical: codes count up, aligned left
    # each symbol's code as a row of top bits, and which of them belong to it
    pattern = ((left[:, None] >> np.arange(top - 1, -1, -1)) & 1).astype(np.uint8)
    own = np.arange(top) < lengths[:, None]
    return pattern[symbols][own[symbols]]


def decode(
    packed: np.ndarray, lengths: np.ndarray, count: int, start: int = 0
) -> tuple[np.ndarray, int]:
    """``count`` symbols from the packed bits ``packed``, from bit ``start``: (the
    symbols, the bit after the last one). A ValueError where the bits do not hold them."""
    if count == 0:
        return np.zeros(0, dtype=np.intp), start
    if count > len(packed) * 8 - start:  # every code takes a bit at least
        raise ValueError(f"the Huffman stream does not hold its {count} symbols")
    order, span, top = _canonical(lengths)
    unused = np.zeros(2**top - span.sum(), dtype=np.int64)  # no code begins so: length 0
    table_symbol = np.r_[np.repeat(order, span), unused]
    table_length = np.r_[np.repeat(np.asarray(lengths, dtype=np.int64)[order], span), unused]
    window, bits = _windows(np.asarray(packed, dtype=np.uint8), start, top)
    step = table_length[window]
    starts = _code_starts(step, count)
    if starts[-1] >= bits or not step[starts].all() or starts[-1] + step[starts[-1]] > bits:
        raise ValueError(f"the Huffman stream does not hold its {count} symbols")
    return table_symbol[window[starts]], start + int(starts[-1] + step[starts[-1]])


def _windows(packed: np.ndarray, start: int, top: int) -> tuple[np.ndarray, int]:
    """The ``top`` bits that begin at each bit from ``start`` on (zeros past the end), and
    how many bits there are from ``start``."""
    bits = len(packed) * 8 - start
    if bits <= 0:
        return np.zeros(0, dtype=np.int64), max(bits, 0)
    data = np.r_[packed, np.zeros(3, dtype=np.uint8)].astype(np.uint64)
    words = data[:-3] << 24 | data[1:-2] << 16 | data[2:-1] << 8 | data[3:]  # from each byte
    at = np.arange(start, start + bits, dtype=np.int64)
    shifted = words[at >> 3] << (at & 7).astype(np.uint64)
    return ((shifted >> np.uint64(32 - top)) & np.uint64((1 << top) - 1)).astype(np.int64), bits


def _code_starts(step: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` positions of the chain 0, next(0), ... where next(p) = p +
    step[p]; a position past the end, or where no code reads, leads to len(step).

    Every 2**hops-th start is found by stepping along next composed with itself 2**hops
    times (from ``hops`` rounds of doubling), the starts between them by stepping all
    those stretches together: Python steps count / 2**hops times, not count times."""
    end = len(step)
    following = np.arange(end, dtype=np.int64) + step
    following[(step == 0) | (following > end)] = end
    following = np.r_[following, end]  # the end leads to itself
    hops = int(min(6, max(0, np.log2(max(count, 1)) // 2)))
    jump = following
    for _ in range(hops):
        jump = jump[jump]
    anchors, at = np.empty(-(-count // 2**hops), dtype=np.int64), 0
    for i in range(len(anchors)):
        anchors[i] = at
        at = jump[at]
    starts = np.empty((len(anchors), 2**hops), dtype=np.int64)
    starts[:, 0] = anchors
    for i in range(1, 2**hops):
        starts[:, i] = following[starts[:, i - 1]]
    return starts.reshape(-1)[:count]
