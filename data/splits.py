"""Train/val split by capture session, stratified by class and object size.

Frames of one drive are near-identical: an image in val whose neighbour frame is in train would
inflate recall. So whole sessions are assigned, never images. The split is stratified: every
stratum, a (class, size bucket) pair, that occurs in two or more sessions gets at least one
session into val, rarest strata first; val is then filled with further sessions, in a seeded
order, up to `val_ratio` of the images. No session moves to val if that would leave train
without a stratum: a stratum found in a single session stays in train (the model must see it)
and is reported as missing from val.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Stratum = tuple[str, str]  # (class, size bucket)


@dataclass(frozen=True)
class Split:
    train: list[str]  # sessions, sorted
    val: list[str]
    missing_in_val: list[Stratum]  # strata with objects that val has none of


def split_sessions(
    strata: Mapping[str, Mapping[Stratum, int]],
    images: Mapping[str, int],
    *,
    val_ratio: float,
    seed: int,
) -> Split:
    """Assign each session of `images` (session -> image count) to train or val.

    `strata[session]` counts that session's objects per (class, size bucket). Deterministic for
    a given seed and input.
    """
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    rng = np.random.default_rng(seed)
    order = sorted(images)
    order = [order[i] for i in rng.permutation(len(order))]
    target = val_ratio * sum(images.values())
    val: list[str] = []
    val_images = 0

    if val_ratio > 0:
        holders: dict[Stratum, list[str]] = {}
        for session in order:
            for stratum, n in strata.get(session, {}).items():
                if n > 0:
                    holders.setdefault(stratum, []).append(session)

        def keeps_train_whole(session: str) -> bool:
            """Moving `session` to val leaves every stratum it carries in train too."""
            return all(
                sum(1 for h in holders[st] if h not in val and h != session) > 0
                for st, n in strata.get(session, {}).items()
                if n > 0
            )

        # Rarest strata first: they have the fewest sessions to choose from.
        for stratum in sorted(holders, key=lambda s: (len(holders[s]), s)):
            sessions = holders[stratum]
            if any(s in val for s in sessions):
                continue
            movable = [s for s in sessions if keeps_train_whole(s)]
            if movable:
                # The smallest such session, so val does not overshoot its size.
                pick = min(movable, key=lambda s: images[s])
                val.append(pick)
                val_images += images[pick]
        for session in order:
            if val_images >= target:
                break
            fits = val_images + images[session] <= max(target, 1) * 1.5
            if session not in val and fits and keeps_train_whole(session):
                val.append(session)
                val_images += images[session]

    val_set = set(val)
    train = sorted(s for s in images if s not in val_set)
    seen_in_val = {st for s in val for st, n in strata.get(s, {}).items() if n > 0}
    everywhere = {st for counts in strata.values() for st, n in counts.items() if n > 0}
    return Split(train=train, val=sorted(val_set), missing_in_val=sorted(everywhere - seen_in_val))
