"""Sparse weights entropy coded, Deep Compression's last stage: each layer's column gaps,
and its codes into a shared-value codebook, Huffman coded (``huffman``).

``export.save_sparse(entropy="huffman")`` stores one uint8 tensor per layer,
``<name>.huffman``, in its safetensors file, so that the file's digest covers it:
the canonical code lengths at 4 bits each (the codes' first, 2**bits of them, then
the gaps' up to the largest gap), then from the next byte the gaps' code followed
by the codes'. The metadata gives each layer's number of entries and of gap code
lengths (``layout``). The gaps run over the flattened weight, as Deep Compression's
relative indices do, so no count per row is stored. One tensor per layer keeps the
file's header short: each tensor takes about 75 bytes of it, 0.3% of a 25 KB
LeNet-300-100.
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab import bitpack, huffman

ENTROPY_CODERS = ("huffman",)
LENGTH_BITS = 4  # huffman.MAX_LENGTH is 15


def encode(
    gaps: np.ndarray, codes: np.ndarray | None, code_bits: int | None
) -> tuple[torch.Tensor, list[int]]:
    """One layer's gaps and, with a codebook, codes, coded: (the tensor, its ``layout``:
    the number of entries and of gap code lengths, for the metadata)."""
    gap_lengths = huffman.code_lengths(np.bincount(gaps))
    tables, bits = [gap_lengths], [huffman.encode(gaps, gap_lengths)]
    if codes is not None:
        code_lengths = huffman.code_lengths(np.bincount(codes, minlength=2**code_bits))
        tables.insert(0, code_lengths)
        bits.append(huffman.encode(codes, code_lengths))
    lengths = bitpack.pack(np.concatenate(tables), LENGTH_BITS)
    coded = np.r_[lengths, np.packbits(np.concatenate(bits))].astype(np.uint8)
    return torch.from_numpy(coded), [len(gaps), len(gap_lengths)]


def decode(
    coded: torch.Tensor, layout: list[int], code_bits: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(gaps, codes or None) back from ``encode``'s tensor and layout; a ValueError
    where they do not hold them."""
    if not (isinstance(layout, list) and len(layout) == 2 and all(
        isinstance(n, int) and n >= 0 for n in layout
    )):  # fmt: skip
        raise ValueError(f"{layout!r} is not a number of entries and of gap code lengths")
    entries, gap_symbols = layout
    size = 2**code_bits if code_bits else 0
    table_bytes = -(-(size + gap_symbols) * LENGTH_BITS // 8)
    data = coded.numpy()
    if len(data) < table_bytes:
        raise ValueError(f"{len(data)} bytes cannot hold {size + gap_symbols} code lengths")
    tables = bitpack.unpack(data[:table_bytes], LENGTH_BITS, size + gap_symbols)
    stream = data[table_bytes:]
    gaps, end = huffman.decode(stream, tables[size:], entries)
    codes = None
    if code_bits:
        codes, end = huffman.decode(stream, tables[:size], entries, end)
    if len(stream) * 8 - end >= 8:
        raise ValueError(f"the Huffman stream is longer than its {entries} entries")
    return gaps, codes
