"""Hamming distances between 64-bit perceptual hashes, scanned with numpy a block at a time.

Review's near-duplicate rule and the leakage check between training data and reference sets
both compare every pair of hashes; this is the one scan they share.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Pairs compared per numpy block (8 bytes each): memory stays bounded at a few tens of MB.
BLOCK_PAIRS = 1 << 22
# Above any distance between two 64-bit hashes: "no other hash".
NO_DISTANCE = 65


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of each pair of uint64 hashes (elementwise, broadcasting)."""
    return np.bitwise_count(a ^ b)


def _blocks(
    a: np.ndarray, b: np.ndarray, *, upper: bool = False
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, first column, distances) for blocks of rows of `a` against `b`.

    With `upper` (a and b the same hashes), a block of rows starting at r is compared with the
    columns from r on only: the pairs below the diagonal are the ones above, mirrored.
    """
    n = len(a)
    step = max(1, BLOCK_PAIRS // max(len(b), 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        first_col = start if upper else 0
        yield start, first_col, distance(a[start:stop, None], b[None, first_col:])


def pairs_within(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of hashes at most `max_distance` bits apart.

    All n²/2 pairs are compared with numpy, a block of rows at a time (XOR, then popcount), so
    memory stays bounded and no Python code runs per pair.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    rows, cols = [], []
    for start, first_col, d in _blocks(h, h, upper=True):
        r, c = np.nonzero(d <= max_distance)
        r, c = r + start, c + first_col
        upper = c > r
        rows.append(r[upper])
        cols.append(c[upper])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def pairs_between(a: np.ndarray, b: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hashes a[i], b[j] at most `max_distance` bits apart."""
    if len(a) == 0 or len(b) == 0:
        return []
    out: list[tuple[int, int, int]] = []
    for start, _, d in _blocks(a, b):
        rows, cols = np.nonzero(d <= max_distance)
        out.extend((int(r) + start, int(c), int(d[r, c])) for r, c in zip(rows, cols, strict=True))
    return out


def nearest_other(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each hash, the Hamming distance to its nearest other hash and that one's index.

    Index -1 (distance 65) when there is no other hash.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    best = np.full(n, NO_DISTANCE, dtype=np.int64)
    where = np.full(n, -1, dtype=np.int64)
    for start, _, block in _blocks(h, h):
        d = block.astype(np.int64)
        stop = start + len(d)
        d[np.arange(stop - start), np.arange(start, stop)] = NO_DISTANCE  # not itself
        if n > 1:
            where[start:stop] = np.argmin(d, axis=1)
            best[start:stop] = d[np.arange(stop - start), where[start:stop]]
    return best, where
