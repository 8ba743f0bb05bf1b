"""Near-duplicate clusters: images whose pHashes are linked within a distance, one kept each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from data.hamming import distance, pairs_within


def near_duplicate_rejections(
    hashes: np.ndarray, sharpness: np.ndarray, max_distance: int
) -> list[tuple[int, int, int]]:
    """(rejected, kept, Hamming distance between them) for every near-duplicate to drop.

    Hashes at most `max_distance` bits apart are linked and linked images form one cluster
    transitively, so a cluster may hold two images further apart than `max_distance` (a slow
    drive past the same facade). Each cluster keeps its sharpest image, the earliest on ties.
    """
    n = len(hashes)
    rows, cols = pairs_within(hashes, max_distance)
    labels = union_find(n, rows, cols)
    members: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        members[label].append(i)
    out: list[tuple[int, int, int]] = []
    for group in members.values():
        if len(group) < 2:
            continue
        idx = np.array(group)
        # argmax takes the first maximum, and `group` is ascending: ties keep the earliest.
        keeper = int(idx[np.argmax(sharpness[idx])])
        distances = distance(hashes[idx], hashes[keeper])
        out.extend(
            (int(i), keeper, int(d)) for i, d in zip(idx, distances, strict=True) if i != keeper
        )
    return sorted(out)


def union_find(n: int, rows: Iterable[int], cols: Iterable[int]) -> np.ndarray:
    """Cluster label (the smallest member index) of each of `n` items linked by the pairs."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    for a, b in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], dtype=np.int64)
