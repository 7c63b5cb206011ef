import heapq

import numpy as np
import pytest

from prunelab import huffman

RNG = np.random.default_rng(0)
SYMBOLS = {
    "empty": np.zeros(0, dtype=np.int64),
    "one distinct symbol": np.full(1000, 7),
    "a single symbol": np.array([200]),
    "all 256 symbols": RNG.integers(0, 256, 20_000),
    "very skewed": np.r_[np.zeros(100_000, dtype=np.int64), np.arange(1, 256)],
    "column gaps": np.minimum(RNG.geometric(0.08, 50_000), 255),  # rare long gaps: > 15 bits
    "bytes of a few values": RNG.binomial(20, 0.3, 30_000),
}


def coded(symbols: np.ndarray, alphabet: int = 256) -> tuple[np.ndarray, np.ndarray]:
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    return lengths, huffman.encode(symbols, lengths)


def huffman_cost(counts: np.ndarray) -> tuple[int, int]:
    """(bits of an optimal prefix code, depth of its tree), independently of code_lengths:
    Huffman's algorithm pairs the two lightest trees (the shallower first on a tie, which
    gives the shallowest optimal tree), and the bits are the sum of the merged weights."""
    heap = [(int(c), 0) for c in counts if c]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        (w1, d1), (w2, d2) = heapq.heappop(heap), heapq.heappop(heap)
        total += w1 + w2
        heapq.heappush(heap, (w1 + w2, max(d1, d2) + 1))
    return total, heap[0][1]


@pytest.mark.parametrize("case", SYMBOLS)
def test_decoding_gives_back_exactly_the_symbols_encoded(case):
    symbols = SYMBOLS[case]
    lengths, bits = coded(symbols)
    decoded, end = huffman.decode(np.packbits(bits), lengths, len(symbols))
    assert np.array_equal(decoded, symbols)
    assert end == len(bits)


@pytest.mark.parametrize("case", [c for c in SYMBOLS if len(SYMBOLS[c]) > 1])
def test_code_is_optimal_and_within_one_bit_of_the_entropy(case):
    symbols = SYMBOLS[case]
    counts = np.bincount(symbols, minlength=256)
    lengths, bits = coded(symbols)
    p = counts[counts > 0] / len(symbols)
    entropy = float(-(p * np.log2(p)).sum())
    # Huffman: H <= bits per symbol <= H + 1 (equal to H + 1 only for one distinct symbol)
    assert entropy <= len(bits) / len(symbols) <= entropy + 1
    cost, depth = huffman_cost(counts)
    if (counts > 0).sum() > 1 and depth <= huffman.MAX_LENGTH:
        assert len(bits) == cost
    assert len(bits) >= cost


def test_lengths_stay_within_15_bits_where_huffman_would_go_deeper():
    fibonacci = [1, 1]
    while len(fibonacci) < 22:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    counts = np.array(fibonacci)  # Huffman's tree for these is a chain 21 deep
    symbols = np.repeat(np.arange(len(counts)), counts)
    lengths, bits = coded(symbols, len(counts))
    assert lengths.max() == huffman.MAX_LENGTH
    assert (2.0 ** -lengths.astype(float)).sum() <= 1  # Kraft: a prefix code
    assert len(bits) >= huffman_cost(counts)[0] and huffman_cost(counts)[1] == 21
    decoded, _ = huffman.decode(np.packbits(bits), lengths, len(symbols))
    assert np.array_equal(decoded, symbols)


def test_a_second_stream_decodes_from_where_the_first_ended():
    gaps, codes = SYMBOLS["column gaps"], RNG.integers(1, 16, len(SYMBOLS["column gaps"]))
    (gap_lengths, gap_bits), (code_lengths, code_bits) = coded(gaps), coded(codes, 16)
    packed = np.packbits(np.r_[gap_bits, code_bits])
    first, end = huffman.decode(packed, gap_lengths, len(gaps))
    second, _ = huffman.decode(packed, code_lengths, len(codes), end)
    assert np.array_equal(first, gaps) and np.array_equal(second, codes)


def test_damaged_streams_and_tables_are_refused():
    symbols = SYMBOLS["column gaps"]
    lengths, bits = coded(symbols)
    packed = np.packbits(bits)
    with pytest.raises(ValueError, match="does not hold its"):
        huffman.decode(packed[: len(packed) // 2], lengths, len(symbols))
    with pytest.raises(ValueError, match="does not hold its"):
        huffman.decode(packed, lengths, len(symbols) + 100)
    with pytest.raises(ValueError, match="does not hold its"):  # and allocates nothing for it
        huffman.decode(packed, lengths, 10**15)
    overfull = lengths.copy()
    overfull[overfull > 0] = 1
    with pytest.raises(ValueError, match="prefix code"):
        huffman.decode(packed, overfull, len(symbols))
    with pytest.raises(ValueError, match="no symbols"):
        huffman.decode(packed, np.zeros(256, dtype=np.uint8), 3)
    one = huffman.code_lengths(np.bincount([5]))  # code "0"; a 1 bit begins no code
    with pytest.raises(ValueError, match="does not hold its"):
        huffman.decode(np.array([0b00100000], dtype=np.uint8), one, 4)
    with pytest.raises(ValueError, match="has no code"):
        huffman.encode(np.array([1, 6]), one)
