"""The keypoint checks: one (x, y, v) per keypoint name, labelled keypoints inside their image
and near their instance's box."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.data_checks.checks import ERROR, WARNING, Check, Offenders, check_result, rounded
from evaluation.data_checks.geometry import BOX_TOLERANCE
from evaluation.data_checks.loading import Coco

__all__ = ["KEYPOINT_ERROR_SHARE", "KEYPOINT_MARGIN", "KEYPOINT_MIN_MARGIN", "check_keypoints"]

KEYPOINT_MARGIN = 0.1  # of the person box's width (x) and height (y)
# Below a tiny object's side (16 px, data.size_buckets) a person's head is a few pixels that
# annotators and the synthetic renderer place by guess, and polygon tracing drops head pieces
# under 4 px: the head's keypoints then sit a few pixels off the box of what is left.
KEYPOINT_MIN_MARGIN = 16.0
# Label Studio keypoints carry no visibility, so an occluded person's hidden head is "labelled"
# (v=2) away from the visible fragment its box holds: about 1% of synthetic persons. A few such
# instances are a warning; more than this share of them is a coordinate bug (an error).
KEYPOINT_ERROR_SHARE = 0.05


def check_keypoints(cocos: Sequence[Coco]) -> list[Check]:
    """`geometry.keypoints_in_image`, `geometry.keypoints_in_person` and
    `geometry.keypoints_count` over the well-formed annotations of every file."""
    in_image, in_person, count = (Offenders() for _ in range(3))
    n: Counter[str] = Counter()
    for coco in cocos:
        _check_keypoints(coco, _KeypointFindings(in_image, in_person, count), n)
    off_share = in_person.count / max(n["keypoint_instances"], 1)
    return [
        check_result(
            "geometry.keypoints_in_image",
            ERROR,
            in_image,
            ok=f"{n['keypoints_visible']} labelled keypoints lie in their images "
            f"(±{BOX_TOLERANCE:g} px)",
            bad="instance(s) with labelled keypoints outside their image",
            todo="Fix the keypoints (a keypoint outside the image is stored as 0, 0, 0) and run "
            "`anonlab prepare` again",
            keypoints=n["keypoints_visible"],
        ),
        check_result(
            "geometry.keypoints_in_person",
            ERROR if off_share > KEYPOINT_ERROR_SHARE else WARNING,
            in_person,
            ok=f"{n['keypoints_visible']} labelled keypoints of {n['keypoint_instances']} "
            "instances lie in their boxes (with margin)",
            bad=f"of {n['keypoint_instances']} instances ({off_share:.1%}) with keypoints "
            "outside their box",
            todo="Fix the keypoints (or the person's box) and run `anonlab prepare` again; "
            f"above {KEYPOINT_ERROR_SHARE:.0%} of instances this is an error, below it a "
            "warning (occluded persons' hidden heads)",
            instances=n["keypoint_instances"],
            keypoints=n["keypoints_visible"],
            share=round(off_share, 4),
            error_share=KEYPOINT_ERROR_SHARE,
            margin=KEYPOINT_MARGIN,
            min_margin_px=KEYPOINT_MIN_MARGIN,
        ),
        check_result(
            "geometry.keypoints_count",
            ERROR,
            count,
            ok=f"{n['keypoint_instances']} instances carry one (x, y, v) per keypoint name",
            bad="instance(s) with the wrong number of keypoints",
            todo="Re-export the keypoints with the taxonomy's keypoint names",
            instances=n["keypoint_instances"],
        ),
    ]


@dataclass(frozen=True)
class _KeypointFindings:
    in_image: Offenders
    in_person: Offenders
    count: Offenders


def _check_keypoints(coco: Coco, found: _KeypointFindings, n: Counter[str]) -> None:
    names = {c["id"]: list(c.get("keypoints") or []) for c in coco.categories}
    by_category: dict[int, list[int]] = defaultdict(list)
    for i, ann in enumerate(coco.annotations):
        kps = ann.get("keypoints")
        if kps is None:
            continue
        expected = names[ann["category_id"]]
        if len(kps) != 3 * len(expected):
            found.count.add(
                coco.file,
                f"{len(kps)} keypoint values, category {ann['category_id']} has "
                f"{len(expected)} keypoint names (3 values each)",
                annotation_id=ann["id"],
                image_id=ann["image_id"],
            )
        elif expected:
            by_category[ann["category_id"]].append(i)

    for cid, rows in by_category.items():
        _check_category_keypoints(coco, rows, names[cid], found, n)


def _check_category_keypoints(
    coco: Coco,
    rows: list[int],
    names: list[str],
    found: _KeypointFindings,
    n: Counter[str],
) -> None:
    """Keypoints of one category's annotations `rows`, all with one (x, y, v) per name."""
    anns = [coco.annotations[i] for i in rows]
    kps = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, len(names), 3)
    visible = kps[..., 2] > 0
    n["keypoint_instances"] += len(anns)
    n["keypoints_visible"] += int(visible.sum())
    stated = np.array([a.get("num_keypoints", -1) for a in anns])
    wrong = np.flatnonzero((stated >= 0) & (stated != visible.sum(axis=1)))
    found.count.add_annotations(
        coco,
        [rows[j] for j in wrong],
        lambda j: (
            f"num_keypoints {stated[wrong[j]]}, {int(visible[wrong[j]].sum())} keypoints labelled"
        ),
    )

    xy = kps[..., :2]
    size = np.array(
        [(coco.images[a["image_id"]]["width"], coco.images[a["image_id"]]["height"]) for a in anns],
        dtype=np.float64,
    )
    bounds = (np.full_like(size, -BOX_TOLERANCE), size + BOX_TOLERANCE)
    _add_outside(found.in_image, coco, rows, names, xy, visible, bounds, "the image")
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    margin = np.maximum(KEYPOINT_MARGIN * box[:, 2:], KEYPOINT_MIN_MARGIN)
    low, high = box[:, :2] - margin, box[:, :2] + box[:, 2:] + margin
    _add_outside(found.in_person, coco, rows, names, xy, visible, (low, high), "bbox")


def _add_outside(
    found: Offenders,
    coco: Coco,
    rows: list[int],
    names: list[str],
    xy: np.ndarray,
    visible: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    what: str,
) -> None:
    """Add annotations `rows` whose labelled keypoints `xy` (N, K, 2) leave [low, high] (N, 2)."""
    low, high = bounds
    with np.errstate(invalid="ignore"):
        inside = ((xy >= low[:, None]) & (xy <= high[:, None])).all(axis=-1)
    outside = visible & ~inside
    bad = np.flatnonzero(outside.any(axis=1))

    def problem(j: int) -> str:
        i = bad[j]
        first = int(np.flatnonzero(outside[i])[0])
        x, y = (round(float(v), 1) for v in xy[i, first])
        region = f"bbox {rounded(coco.annotations[rows[i]]['bbox'])}" if what == "bbox" else what
        return (
            f"{int(outside[i].sum())} keypoint(s) outside {region}, e.g. {names[first]} at "
            f"({x}, {y})"
        )

    found.add_annotations(coco, [rows[j] for j in bad], problem)
