"""`anonlab audit`: independent detectors over anonymized images, reporting what they still see.

For every image (files, folders, globs, as `anonlab blur` takes them; a blur output's own
`<image>.mask.png` beside it is not one), the independent detectors (`serving.runtime.independent`)
look at the image upright, and each detection is compared with what the runtime hid there:

- the hidden region is read from the image's mask (`<image>.mask.png`, `anonlab blur --masks`:
  exactly the pixels anonymizing changed) when there is one, else from its sidecar
  (`<image>.json`, `anonlab blur --sidecar`: the box of every hidden detection, a box across a
  panorama's seam wrapped);
- a detection is a **residual** (a face or plate the runtime may have left visible) when less
  than `coverage` (default 0.5) of its box lies in the hidden region;
- an image with neither mask nor sidecar is **unauditable**: nothing says what was hidden, so
  it is listed as such, never passed silently; an image that cannot be read is **failed**.

The report (JSON, `--out`) lists every residual with image, detector, class, box (upright
pixels) and score, never pixels; the images audited, unauditable and failed; and residuals
scoring at least `threshold` per 1,000 audited images. The command exits 1 when any residual
scores at least `threshold`, or when an image is unauditable or failed: an audit that could not
look is not a pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serving.runtime.errors import ServingError
from serving.runtime.imagefile import read_upright
from serving.runtime.independent import IndependentDetector
from serving.runtime.inputs import find_inputs
from serving.runtime.one_image import MASK_SUFFIX, companions
from serving.runtime.progress import progress

__all__ = ["AuditReport", "Residual", "audit", "audit_image", "hidden_region"]

DEFAULT_COVERAGE = 0.5
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Residual:
    """A detection of an independent detector that the hidden region does not cover."""

    image: str
    detector: str
    cls: str
    box: list[float]
    score: float
    hidden: float  # the share of its box inside the hidden region


@dataclass
class AuditReport:
    """What `audit` found; `passed` when nothing at or above the threshold was left visible and
    every image could be audited."""

    detectors: list[str]
    threshold: float
    coverage: float
    audited: int = 0
    unauditable: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    residuals: list[Residual] = field(default_factory=list)

    @property
    def above(self) -> list[Residual]:
        """The residuals scoring at least the threshold."""
        return [r for r in self.residuals if r.score >= self.threshold]

    @property
    def per_thousand(self) -> float:
        """Residuals at or above the threshold per 1,000 audited images."""
        return 1000 * len(self.above) / self.audited if self.audited else 0.0

    @property
    def passed(self) -> bool:
        return not self.above and not self.unauditable and not self.failed

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["residuals"] = [
            {("class" if k == "cls" else k): v for k, v in asdict(r).items()}
            for r in self.residuals
        ]
        out["residuals_above_threshold"] = len(self.above)
        out["per_1000_images"] = round(self.per_thousand, 3)
        out["passed"] = self.passed
        return out


def hidden_region(image: Path, width: int, height: int) -> np.ndarray | None:
    """What the runtime hid in `image` (upright, True where hidden), from its mask or sidecar;
    None when it has neither. ServingError when one is there but unreadable or of another size."""
    sidecar, mask = (Path(p) for p in companions(str(image)))
    if mask.is_file():
        hidden = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if hidden is None or hidden.shape != (height, width):
            shape = None if hidden is None else hidden.shape[::-1]
            raise ServingError(f"{mask}: not a {width}x{height} mask of this image ({shape})")
        return hidden > 0
    if not sidecar.is_file():
        return None
    try:
        body = json.loads(sidecar.read_text(encoding="utf-8"))
        boxes = [d["box"] for d in body["detections"]]
        size = (body["width"], body["height"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServingError(f"{sidecar}: not a blur sidecar ({exc})") from None
    if size != (width, height):
        raise ServingError(
            f"{sidecar}: describes a {size[0]}x{size[1]} image, not {width}x{height}"
        )
    hidden = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        rows = slice(max(0, int(np.floor(y0))), min(height, int(np.ceil(y1))))
        columns = np.arange(int(np.floor(x0)), int(np.ceil(x1)))
        if len(columns) and columns[-1] >= width:  # across a panorama's seam
            columns = np.unique(columns % width)
        hidden[rows, columns[(columns >= 0) & (columns < width)]] = True
    return hidden


def audit_image(
    path: Path, detectors: Sequence[IndependentDetector], coverage: float
) -> list[Residual] | None:
    """The residuals of one image; None when it is unauditable (no mask, no sidecar)."""
    rgb = read_upright(path)
    height, width = rgb.shape[:2]
    hidden = hidden_region(path, width, height)
    if hidden is None:
        return None
    integral = cv2.integral(hidden.astype(np.uint8))
    out = []
    for detector in detectors:
        found = detector.detect(rgb)
        for box, score, label in zip(found.boxes, found.scores, found.labels, strict=True):
            share = _hidden_share(integral, box, width, height)
            if share < coverage:
                out.append(
                    Residual(
                        image=str(path),
                        detector=detector.name,
                        cls=detector.classes[int(label) - 1],
                        box=[round(float(v), 1) for v in box],
                        score=round(float(score), 4),
                        hidden=round(share, 4),
                    )
                )
    return out


def audit(
    inputs: Sequence[str],
    detectors: Sequence[IndependentDetector],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    coverage: float = DEFAULT_COVERAGE,
) -> AuditReport:
    """Audit every image the inputs name (module docstring)."""
    if not 0 <= threshold <= 1 or not 0 < coverage <= 1:
        raise ServingError(
            f"threshold {threshold} must be from 0 to 1, coverage {coverage} above 0 up to 1"
        )
    found = find_inputs(inputs)
    report = AuditReport([d.name for d in detectors], threshold, coverage)
    for refused in found.refused:
        report.failed.append({"image": str(refused.source), "error": refused.error})
    images = [job.source for job in found.jobs if not _is_mask_of_another(job.source)]
    for path in progress(images, desc="audit"):
        try:
            residuals = audit_image(path, detectors, coverage)
        except (OSError, ServingError) as exc:
            report.failed.append({"image": str(path), "error": str(exc)})
            continue
        if residuals is None:
            report.unauditable.append(
                {"image": str(path), "reason": "no mask or sidecar beside it says what was hidden"}
            )
            continue
        report.audited += 1
        report.residuals += residuals
    return report


def _hidden_share(integral: np.ndarray, box: np.ndarray, width: int, height: int) -> float:
    """The share of `box`'s pixels (clipped to the image) that are hidden, from the hidden
    region's integral image; 1 for a box with no pixel in the image."""
    x0, x1 = (int(np.clip(v, 0, width)) for v in (np.floor(box[0]), np.ceil(box[2])))
    y0, y1 = (int(np.clip(v, 0, height)) for v in (np.floor(box[1]), np.ceil(box[3])))
    area = (x1 - x0) * (y1 - y0)
    if area <= 0:
        return 1.0
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return float(inside) / area


def _is_mask_of_another(path: Path) -> bool:
    """Whether `path` is the `<image>.mask.png` that `anonlab blur --masks` wrote for an image
    beside it."""
    name = path.name
    return name.endswith(MASK_SUFFIX) and (path.parent / name[: -len(MASK_SUFFIX)]).is_file()
