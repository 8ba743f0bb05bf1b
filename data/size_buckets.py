"""Object size buckets, by ground-truth area in pixels: recall is reported per bucket because
distant faces and plates (a few pixels across) are the ones a model misses."""

from __future__ import annotations

import numpy as np

# Upper bounds (exclusive) of each bucket's area; `large` is everything above.
BUCKETS: dict[str, float] = {"tiny": 16**2, "small": 32**2, "medium": 96**2, "large": float("inf")}


def size_bucket(area: float) -> str:
    """The bucket of one object: tiny < 16², small < 32², medium < 96², large."""
    for name, upper in BUCKETS.items():
        if area < upper:
            return name
    return "large"


def size_buckets(areas: np.ndarray) -> np.ndarray:
    """Bucket names of many areas at once."""
    names = np.array(list(BUCKETS))
    bounds = np.array(list(BUCKETS.values())[:-1])
    return names[np.searchsorted(bounds, np.asarray(areas, dtype=np.float64), side="right")]
