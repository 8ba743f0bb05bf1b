"""The shift checks (warnings only): each class/bucket's share of a split's objects against the
baseline version's stats."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from data.size_buckets import BUCKETS, size_buckets
from evaluation.data_checks.checks import SHOWN, WARNING, Check
from evaluation.data_checks.loading import Coco

__all__ = ["ALL", "EPS", "check_shift", "count_objects"]

EPS = 1e-9
ALL = "all"


def count_objects(coco: Coco) -> dict[str, dict[str, int]]:
    """Objects per class and size bucket, as prepare's stats.json counts them."""
    name_of = {c["id"]: str(c["name"]) for c in coco.categories}
    out = {name: dict.fromkeys(BUCKETS, 0) for name in name_of.values()}
    if coco.annotations:
        buckets = size_buckets(np.array([a["area"] for a in coco.annotations], dtype=np.float64))
        classes = [name_of[a["category_id"]] for a in coco.annotations]
        for (name, bucket), k in Counter(zip(classes, buckets.tolist(), strict=True)).items():
            out[name][bucket] = k
    return out


def check_shift(
    current: Mapping[str, Mapping[str, Mapping[str, int]]],
    baseline: Mapping[str, Any] | None,
    *,
    max_shift: float,
    min_objects: int,
) -> list[Check]:
    """`shift.<split>` for each split of `current` (objects per class and bucket), then each
    split only the `baseline` stats have."""
    if baseline is None:
        return [
            Check(
                f"shift.{split}",
                True,
                WARNING,
                f"shift.{split}: no baseline stats (first version): nothing compared",
                {"baseline": False, "objects": dict(objects)},
            )
            for split, objects in current.items()
        ]
    old_splits = {
        split: s["objects"]
        for split, s in baseline.items()
        if isinstance(s, Mapping) and isinstance(s.get("objects"), Mapping)
    }
    checks = []
    for split in [*current, *(s for s in old_splits if s not in current)]:
        name = f"shift.{split}"
        if split not in old_splits:
            checks.append(Check(name, True, WARNING, f"{name}: new split, not in the baseline", {}))
        elif split not in current:
            checks.append(
                Check(
                    name,
                    False,
                    WARNING,
                    f"{name}: in the baseline but not in this version. Check that it was meant "
                    "to go (prepare.reference_sets)",
                    {},
                )
            )
        else:
            checks.append(
                _shift_check(name, current[split], old_splits[split], max_shift, min_objects)
            )
    return checks


def _shift_check(
    name: str,
    new: Mapping[str, Mapping[str, int]],
    old: Mapping[str, Mapping[str, int]],
    max_shift: float,
    min_objects: int,
) -> Check:
    """Warn where a class/bucket's share of the split's objects moved by more than `max_shift`."""
    classes = [*new, *(c for c in old if c not in new)]

    def count(table: Mapping[str, Mapping[str, int]], c: str, bucket: str) -> int:
        per = table.get(c) or {}
        return int(sum(per.values())) if bucket == ALL else int(per.get(bucket, 0))

    new_total = sum(count(new, c, ALL) for c in classes)
    old_total = sum(count(old, c, ALL) for c in classes)
    rows: list[dict[str, Any]] = []
    flagged: list[tuple[float, str]] = []
    for c in classes:
        for bucket in (*BUCKETS, ALL):
            n_new, n_old = count(new, c, bucket), count(old, c, bucket)
            share_new = n_new / new_total if new_total else 0.0
            share_old = n_old / old_total if old_total else 0.0
            change = abs(share_new - share_old) / max(share_old, EPS)
            judged = max(n_new, n_old) >= min_objects
            # A class that appears or vanishes is worth a look whatever its count.
            note = ""
            if bucket == ALL and (n_old == 0) != (n_new == 0):
                note = "appeared" if n_old == 0 else "disappeared"
            flag = bool(note) or (judged and change > max_shift)
            rows.append(
                {
                    "class": c,
                    "bucket": bucket,
                    "old": n_old,
                    "new": n_new,
                    "old_share": round(share_old, 4),
                    "new_share": round(share_new, 4),
                    "relative_change": round(change, 4) if share_old > 0 else None,
                    "judged": judged,
                    "flagged": flag,
                }
            )
            if flag:
                text = f"{c} {note}" if note else _move(f"{c}/{bucket}", share_old, share_new)
                flagged.append((math.inf if note else change, text))
    # The message names the biggest moves: classes that come or go, then by relative change.
    flagged.sort(key=lambda f: -f[0])
    details = {
        "objects": {"old": old_total, "new": new_total},
        "max_shift": max_shift,
        "min_objects": min_objects,
        "count": len(flagged),
        "table": rows,
    }
    if not flagged:
        return Check(
            name,
            True,
            WARNING,
            f"{name}: no class/bucket share moved by more than {max_shift:.0%} "
            f"({old_total} -> {new_total} objects)",
            details,
        )
    shown = "; ".join(text for _, text in flagged[:SHOWN]) + (
        f" (and {len(flagged) - SHOWN} more)" if len(flagged) > SHOWN else ""
    )
    return Check(
        name,
        False,
        WARNING,
        f"{name}: {len(flagged)} class/bucket share(s) moved by more than {max_shift:.0%} since "
        f"the baseline ({old_total} -> {new_total} objects): {shown}. Check that the new data is "
        "what you meant",
        details,
    )


def _move(what: str, old: float, new: float) -> str:
    change = f"{new / old - 1:+.0%}" if old > 0 else "was none"
    return f"{what} share {old:.3f} -> {new:.3f} ({change})"
