"""Leakage between training data and reference sets, by content hash and by perceptual hash.

A reference set measures recall on images the model has never seen. The same photo (same
sha256), or a near-identical frame of it (64-bit pHash within `max_hamming` bits, as review
computes it), in train would make that measure a lie: each such pair is a leak, and a leak is
an error that names the images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from data.hamming import pairs_between


@dataclass(frozen=True)
class Leak:
    refset: str
    train_image: str  # sha256
    reference_image: str  # sha256
    kind: str  # "identical" (same sha256) or "near_duplicate"
    distance: int  # pHash bits apart (0 for identical)


def find_leaks(
    train: Mapping[str, int],
    references: Mapping[str, Mapping[str, int]],
    *,
    max_hamming: int,
) -> list[Leak]:
    """Every (train, reference) image pair that is the same or nearly the same image.

    `train` and each reference set map sha256 -> 64-bit pHash. Sorted by reference set, then
    train image.
    """
    train_ids = list(train)
    train_hashes = np.array([train[i] for i in train_ids], dtype=np.uint64)
    leaks: list[Leak] = []
    for refset, images in sorted(references.items()):
        ref_ids = list(images)
        ref_hashes = np.array([images[i] for i in ref_ids], dtype=np.uint64)
        for r, c, d in pairs_between(train_hashes, ref_hashes, max_hamming):
            t, ref = train_ids[r], ref_ids[c]
            kind = "identical" if t == ref else "near_duplicate"
            leaks.append(Leak(refset, t, ref, kind, 0 if kind == "identical" else d))
    return sorted(leaks, key=lambda x: (x.refset, x.train_image, x.reference_image))
