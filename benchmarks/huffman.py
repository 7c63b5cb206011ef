"""Speed and size of the Huffman stage (``prunelab.huffman``) on a few million symbols.

The symbols are drawn as an export's are: column gaps of a layer that keeps each
weight with probability ``--density`` (geometric, capped at 255 as the export
bridges longer gaps), and codes into a codebook of ``--bits`` bits (a rounded
normal over the centroids, as k-means on bell-shaped weights gives). Prints bits
per symbol against the entropy, and the best of ``--repeats`` encode and decode times.

    python benchmarks/huffman.py [--symbols 4000000] [--density 0.083] [--bits 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from prunelab import huffman


def entropy(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def best_time(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(name: str, symbols: np.ndarray, alphabet: int, repeats: int) -> None:
    def encode():
        lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
        return lengths, np.packbits(huffman.encode(symbols, lengths))

    encoding, (lengths, packed) = best_time(repeats, encode)
    decoding, (decoded, end) = best_time(
        repeats, lambda: huffman.decode(packed, lengths, len(symbols))
    )
    assert np.array_equal(decoded, symbols)
    print(f"| {name} | {len(symbols):,} | {entropy(symbols):.3f} | {end / len(symbols):.3f} | "
          f"{encoding:.2f} | {decoding:.2f} | {len(symbols) / decoding / 1e6:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4_000_000)
    parser.add_argument("--density", type=float, default=0.083)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gaps = np.minimum(rng.geometric(args.density, args.symbols), 255)
    centroids = 2**args.bits - 1
    codes = np.clip(np.rint(rng.normal(centroids / 2 + 0.5, centroids / 6, args.symbols)),
                    1, centroids).astype(np.int64)  # fmt: skip
    print("| symbols | count | entropy (bits) | coded (bits) | encode (s) | decode (s) | "
          "decoded (M/s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    measure(f"column gaps, density {args.density:g}", gaps, 256, args.repeats)
    measure(f"{args.bits}-bit codes", codes, 2**args.bits, args.repeats)


if __name__ == "__main__":
    main()
