"""Sparse weights entropy coded, Deep Compression's last stage: each layer's column gaps,
and its codes into a shared-value codebook, Huffman coded (``huffman``).

``export.save_sparse(entropy="huffman")`` stores two uint8 tensors per layer in its
safetensors file, so the file's digest covers them: ``<name>.lengths``, the
canonical code lengths at 4 bits each (the codes' first, 2**bits of them, then the
gaps' up to the largest gap), and ``<name>.bits``, the gaps' code followed by the
codes'. The gaps run over the flattened weight, as Deep Compression's relative
indices do, so no count per row is stored; the metadata gives each layer's number
of entries. Few tensors per layer also keep the file's header short: at 27 KB a
tensor's line in it is a quarter of a percent.
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab import bitpack, huffman

ENTROPY_CODERS = ("huffman",)
LENGTH_BITS = 4  # huffman.MAX_LENGTH is 15


def encode(
    gaps: np.ndarray, codes: np.ndarray | None, code_bits: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(code lengths, bits) of one layer's gaps and, with a codebook, its codes."""
    gap_lengths = huffman.code_lengths(np.bincount(gaps))
    tables, bits = [gap_lengths], [huffman.encode(gaps, gap_lengths)]
    if codes is not None:
        code_lengths = huffman.code_lengths(np.bincount(codes, minlength=2**code_bits))
        tables.insert(0, code_lengths)
        bits.append(huffman.encode(codes, code_lengths))
    lengths = bitpack.pack(np.concatenate(tables), LENGTH_BITS)
    return torch.from_numpy(lengths), torch.from_numpy(np.packbits(np.concatenate(bits)))


def decode(
    lengths: torch.Tensor, bits: torch.Tensor, entries: int, code_bits: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(gaps, codes or None) of ``entries`` entries back from ``encode``'s tensors; a
    ValueError where they do not hold them."""
    if not isinstance(entries, int) or entries < 0:
        raise ValueError(f"{entries!r} is not a number of entries")
    tables = bitpack.unpack(lengths.numpy(), LENGTH_BITS, len(lengths) * 8 // LENGTH_BITS)
    size = 2**code_bits if code_bits else 0
    if len(tables) < size:
        raise ValueError(f"{len(tables)} code lengths, fewer than the {size} codes")
    stream = bits.numpy()
    gaps, end = huffman.decode(stream, tables[size:], entries)
    codes = None
    if code_bits:
        codes, end = huffman.decode(stream, tables[:size], entries, end)
    if len(stream) * 8 - end >= 8:
        raise ValueError(f"the Huffman stream is longer than its {entries} entries")
    return gaps, codes
