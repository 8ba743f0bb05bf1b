"""The geometry checks of boxes and masks: boxes inside their images, masks that decode (with
the pixel totals of compressed RLEs), areas and boxes that agree with their masks."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.coco.rle import as_rle
from data.coco.schema import segmentation_problem
from evaluation.data_checks.checks import ERROR, Check, Offenders, check_result, rounded
from evaluation.data_checks.loading import Coco

__all__ = ["AREA_TOLERANCE", "BOX_TOLERANCE", "check_geometry"]

BOX_TOLERANCE = 1.0  # px: a box may overhang its image or miss its mask's extent by this much
AREA_TOLERANCE = 0.01  # relative: `area` against the mask's pixel count
_AREA_CHUNK = 255
_RLE_CHUNK = 1 << 20  # chars


def check_geometry(cocos: Sequence[Coco]) -> list[Check]:
    """`geometry.boxes_inside`, `geometry.masks_non_empty`, `geometry.mask_area` and
    `geometry.mask_bbox` over the well-formed annotations of every file."""
    boxes, empty, area, extent = (Offenders() for _ in range(4))
    n: Counter[str] = Counter()
    for coco in cocos:
        _check_boxes(coco, boxes, n)
        _check_masks(coco, empty, area, extent, n)
    return [
        check_result(
            "geometry.boxes_inside",
            ERROR,
            boxes,
            ok=f"{n['boxes']} boxes finite, positive and inside their images "
            f"(±{BOX_TOLERANCE:g} px)",
            bad="bad box(es)",
            todo="Fix the annotations and run `anonlab prepare` again",
            boxes=n["boxes"],
            tolerance_px=BOX_TOLERANCE,
        ),
        check_result(
            "geometry.masks_non_empty",
            ERROR,
            empty,
            ok=f"{n['masks']} masks decode with pixels ({n['box_only']} box-only instances)",
            bad="mask(s) empty or not decodable",
            todo="Redraw or remove these objects and run `anonlab prepare` again",
            masks=n["masks"],
            box_only=n["box_only"],
        ),
        check_result(
            "geometry.mask_area",
            ERROR,
            area,
            ok=f"{n['masks_decoded']} areas equal their masks' pixel counts "
            f"(±{AREA_TOLERANCE:.0%})",
            bad="area(s) differ from the mask's pixel count",
            todo="Recompute `area` from the masks (run `anonlab annotate pull` and prepare again)",
            masks=n["masks_decoded"],
            tolerance=AREA_TOLERANCE,
        ),
        check_result(
            "geometry.mask_bbox",
            ERROR,
            extent,
            ok=f"{n['masks_decoded']} boxes match their masks' extents (±{BOX_TOLERANCE:g} px)",
            bad="box(es) differ from the mask's extent",
            todo="Recompute `bbox` from the masks (run `anonlab annotate pull` and prepare again)",
            masks=n["masks_decoded"],
            tolerance_px=BOX_TOLERANCE,
        ),
    ]


def _check_boxes(coco: Coco, found: Offenders, n: Counter[str]) -> None:
    anns = coco.annotations
    n["boxes"] += len(anns)
    if not anns:
        return
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    size = np.array(
        [(coco.images[a["image_id"]]["width"], coco.images[a["image_id"]]["height"]) for a in anns],
        dtype=np.float64,
    )
    # Schema let through only finite numbers (data.coco.schema.is_finite_number).
    positive = (box[:, 2:] > 0).all(axis=1)
    inside = (box[:, :2] >= -BOX_TOLERANCE).all(axis=1) & (
        box[:, :2] + box[:, 2:] <= size + BOX_TOLERANCE
    ).all(axis=1)
    bad = np.flatnonzero(~(positive & inside))

    def problem(k: int) -> str:
        i = bad[k]
        shown = [round(float(v), 2) for v in box[i]]
        if not positive[i]:
            return f"bbox {shown} has no positive width and height"
        return f"bbox {shown} leaves the {int(size[i, 0])}x{int(size[i, 1])} image"

    found.add_annotations(coco, bad, problem)


def _check_masks(
    coco: Coco, empty: Offenders, area: Offenders, extent: Offenders, n: Counter[str]
) -> None:
    rles: list[dict[str, Any]] = []
    rows: list[int] = []
    strings: list[tuple[int, str, int]] = []  # (index in rles, compressed counts, image pixels)
    for i, ann in enumerate(coco.annotations):
        seg = ann.get("segmentation")
        if not seg:
            n["box_only"] += 1
            continue
        n["masks"] += 1
        image = coco.images[ann["image_id"]]
        height, width = image["height"], image["width"]
        problem = segmentation_problem(seg, height, width) or _polygon_range_problem(
            seg, height, width
        )
        if problem is None:
            try:
                rle = as_rle(seg, height, width)
            except (TypeError, ValueError, KeyError) as e:
                problem = str(e)
            else:
                if isinstance(seg, dict) and isinstance(seg["counts"], str):
                    strings.append((len(rles), seg["counts"], height * width))
                rles.append(rle)
                rows.append(i)
                continue
        empty.add(
            coco.file,
            f"mask does not decode: {problem}",
            annotation_id=ann["id"],
            image_id=ann["image_id"],
        )
    # A compressed RLE must cover its image exactly: pycocotools reads a short or long one
    # without a word (training's decoder refuses it), so it is checked here, all at once.
    totals, valid = _rle_totals([counts for _, counts, _ in strings])
    broken: set[int] = set()
    for (k, _, pixels), total, ok in zip(strings, totals.tolist(), valid.tolist(), strict=True):
        if ok and total == pixels:
            continue
        broken.add(k)
        ann = coco.annotations[rows[k]]
        problem = f"RLE covers {total} pixels, the image {pixels}" if ok else "malformed RLE"
        empty.add(
            coco.file,
            f"mask does not decode: {problem}",
            annotation_id=ann["id"],
            image_id=ann["image_id"],
        )
    if broken:
        rles = [r for k, r in enumerate(rles) if k not in broken]
        rows = [r for k, r in enumerate(rows) if k not in broken]
    if not rles:
        return
    pixels = _mask_areas(rles)
    mask_box = mask_utils.toBbox(rles)
    anns = [coco.annotations[i] for i in rows]
    stated = np.array([a["area"] for a in anns], dtype=np.float64)
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)

    none = np.flatnonzero(pixels == 0)
    empty.add_annotations(coco, [rows[k] for k in none], lambda k: "mask has no pixel")
    decoded = pixels > 0
    n["masks_decoded"] += int(decoded.sum())
    with np.errstate(invalid="ignore"):
        area_ok = np.abs(stated - pixels) <= AREA_TOLERANCE * pixels
        xyxy = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)
        mask_xyxy = np.concatenate([mask_box[:, :2], mask_box[:, :2] + mask_box[:, 2:]], axis=1)
        extent_ok = (np.abs(xyxy - mask_xyxy) <= BOX_TOLERANCE).all(axis=1)
    bad_area = np.flatnonzero(decoded & ~area_ok)
    bad_extent = np.flatnonzero(decoded & ~extent_ok)
    area.add_annotations(
        coco,
        [rows[k] for k in bad_area],
        lambda k: f"area {stated[bad_area[k]]:g}, mask {int(pixels[bad_area[k]])} px",
    )
    extent.add_annotations(
        coco,
        [rows[k] for k in bad_extent],
        lambda k: (
            f"bbox {rounded(box[bad_extent[k]])}, mask extent {rounded(mask_box[bad_extent[k]])}"
        ),
    )


def _mask_areas(rles: list[dict[str, Any]]) -> np.ndarray:
    """Pixel counts of many RLEs. pycocotools 2.0.11's `area` on numpy 2 raises OverflowError
    for more than 255 masks in one call, so it gets them 255 at a time."""
    chunks = [mask_utils.area(rles[i : i + _AREA_CHUNK]) for i in range(0, len(rles), _AREA_CHUNK)]
    return np.concatenate(chunks).astype(np.float64)


def _rle_totals(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels each compressed COCO RLE string covers (the sum of its runs), and whether it
    is well-formed (not empty, its last count finished, no negative run).

    `training.masks.rle_counts` decodes one string the same way; one call per mask would cost
    minutes on a million masks, so here all strings are joined and decoded in one pass, and the
    delta coding (from the fourth count on, each is stored as the difference to the count two
    before) is undone by cumulative sums per string and parity.
    """
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    # Chunks of about a million chars keep the arrays in cache: one pass over 100M chars
    # would hold several GB of int64 temporaries.
    cut = np.searchsorted(np.cumsum(lengths), np.arange(_RLE_CHUNK, lengths.sum(), _RLE_CHUNK))
    bounds = [0, *np.unique(cut).tolist(), len(strings)]
    parts = [_rle_chunk(strings[a:b], lengths[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts])


def _rle_chunk(strings: Sequence[str], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum(lengths)
    c = np.frombuffer("".join(strings).encode("ascii"), np.uint8) - np.uint8(48)
    more = (c & 0x20) != 0
    filled = lengths > 0
    valid = filled.copy()
    valid[filled] = ~more[ends[filled] - 1]
    more[ends[filled] - 1] = False  # a truncated string's last count ends with it all the same
    last = np.flatnonzero(~more)  # the last char of every count
    first = np.concatenate(([0], last[:-1] + 1))
    starts_at = np.zeros(len(c), np.int64)
    starts_at[first] = first
    position = np.arange(len(c)) - np.maximum.accumulate(starts_at)  # of a char in its count
    shift = np.minimum(5 * position, 58)  # a count of more than 12 chars is garbage anyway
    x = np.add.reduceat((c & 0x1F).astype(np.int64) << shift, first)
    negative = (c[last] & 0x10) != 0
    x[negative] |= -1 << (shift[last[negative]] + 5)

    string = np.searchsorted(ends, last, side="right")  # the string of each count
    starts = np.searchsorted(string, np.arange(len(strings)))  # each string's first count
    k = np.arange(len(x)) - starts[string]  # each count's position in its string
    for parity, since in ((0, 2), (1, 1)):
        sel = np.flatnonzero((k % 2 == parity) & (k >= since))
        if not len(sel):
            continue
        run = np.cumsum(x[sel])
        segment = np.concatenate(([True], string[sel][1:] != string[sel][:-1]))
        base = np.maximum.accumulate(np.where(segment, np.arange(len(sel)), 0))
        x[sel] = run - run[base] + x[sel][base]

    totals = np.zeros(len(strings), np.int64)
    lowest = np.zeros(len(strings), np.int64)
    totals[filled] = np.add.reduceat(x, starts[filled])
    lowest[filled] = np.minimum.reduceat(x, starts[filled])
    return totals, valid & (lowest >= 0)


def _polygon_range_problem(seg: Any, height: int, width: int) -> str | None:
    """Polygon vertices far outside the image: pycocotools would rasterise the edges to them
    step by step (minutes for a vertex at 1e8), and no annotator drew them."""
    if not isinstance(seg, list):
        return None
    for polygon in seg:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if (np.abs(xy - [width / 2, height / 2]) > [width, height]).any():
            return f"polygon vertices lie far outside the {width}x{height} image"
    return None
