"""Bootstrap 95% intervals of ratios of sums over images resampled with replacement."""

from __future__ import annotations

import numpy as np


def bootstrap_intervals(
    denominators: np.ndarray, numerators: np.ndarray, n_boot: int, seed: int
) -> list[list[float] | None] | None:
    """95% percentile intervals of sum(numerator) / sum(denominator) over images resampled with
    replacement; per numerator column, whose denominator is column mod denominator columns."""
    if n_boot == 0:
        return None
    n_images, width = denominators.shape
    values = np.hstack([denominators, numerators])
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // max(n_images, 1))  # bounds the resampling matrix's memory
    ratios = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        picks = rng.integers(0, n_images, size=(size, n_images))
        picks += np.arange(size)[:, None] * n_images
        weights = np.bincount(picks.ravel(), minlength=size * n_images).reshape(size, n_images)
        sums = weights.astype(np.float64) @ values
        den = np.tile(sums[:, :width], numerators.shape[1] // width)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(sums[:, width:] / np.where(den > 0, den, np.nan))
    ratio = np.vstack(ratios)
    usable = ~np.isnan(ratio).all(axis=0)
    out: list[list[float] | None] = [None] * ratio.shape[1]
    if usable.any():
        bounds = np.nanpercentile(ratio[:, usable], [2.5, 97.5], axis=0)
        for k, m in enumerate(np.flatnonzero(usable).tolist()):
            out[m] = [float(bounds[0, k]), float(bounds[1, k])]
    return out
