"""Pre-annotation by OpenCV's bundled Haar cascades, for when there is no champion: faces (two
cascades, whose disagreement adds to the uncertainty) as ellipses and plates as rectangles, found
on the upright image reduced to a long side of `WORK_SIZE`. The uncertainty U is defined in
`annotation.push`'s docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation.preannotation import NO_DETECTION_UNCERTAINTY, Prediction, score_uncertainty
from annotation.predictions import percent
from data.config import TaxonomyConfig
from data.manifest import ManifestRecord
from serving.runtime.independent.haar import confidence

log = logging.getLogger(__name__)

WORK_SIZE = 800  # long side of the image the cascades look at
MATCH_IOU = 0.3
# A Haar face box spans brows to mouth; the face to blur reaches from forehead to chin.
FACE_HEIGHT_FACTOR = 1.25

FACE = "face"
PLATE = "license_plate"


@dataclass(frozen=True)
class Detection:
    """A box found on the working image (pixels), with a confidence in [0, 1]."""

    label: str
    x: float
    y: float
    w: float
    h: float
    confidence: float


class HaarDetector:
    """OpenCV's bundled Haar cascades: faces (two cascades, for disagreement) and plates."""

    def __init__(self) -> None:
        import cv2

        from serving.runtime.independent.haar import cascade as load

        self.model_version = f"haar-opencv-{cv2.__version__}"
        self._face = load("haarcascade_frontalface_default.xml")
        self._face_alt = load("haarcascade_frontalface_alt2.xml")
        self._plate = load("haarcascade_russian_plate_number.xml")

    def predict(
        self, record: ManifestRecord, raw_dir: Path, taxonomy: TaxonomyConfig
    ) -> Prediction:
        from data.image_scores import decode_working

        try:
            work = decode_working(raw_dir / record.path, WORK_SIZE, record.orientation)
        except (OSError, ValueError) as e:
            # Review read this image; a file that broke since gets no pre-annotation, not a
            # failed push: the annotator sees the broken image and can skip it.
            log.warning("%s: not readable for pre-annotation (%s)", record.path, e)
            return Prediction([], NO_DETECTION_UNCERTAINTY, self.model_version)
        faces, faces_alt, plates = self.detect(work.luma)
        if FACE not in taxonomy.classes:
            faces, faces_alt = [], []
        if PLATE not in taxonomy.classes:
            plates = []
        height, width = work.luma.shape[:2]
        detections = faces + plates
        return Prediction(
            result=to_regions(detections, width, height, record.width, record.height),
            uncertainty=image_uncertainty(detections, faces, faces_alt),
            model_version=self.model_version,
        )

    def detect(self, luma: Any) -> tuple[list[Detection], list[Detection], list[Detection]]:
        """Faces by the default cascade, faces by the second cascade, plates."""
        import cv2

        luma = cv2.equalizeHist(luma)
        side = max(luma.shape[:2])
        min_face = max(12, side // 100)
        return (
            _run(self._face, luma, FACE, 1.1, 3, (min_face, min_face)),
            _run(self._face_alt, luma, FACE, 1.1, 3, (min_face, min_face)),
            _run(self._plate, luma, PLATE, 1.1, 3, (24, 8)),
        )


def _run(
    cascade: Any, luma: Any, label: str, scale: float, neighbours: int, min_size: tuple[int, int]
) -> list[Detection]:
    boxes, counts = cascade.detectMultiScale2(
        luma, scaleFactor=scale, minNeighbors=neighbours, minSize=min_size
    )
    return [
        Detection(label, float(x), float(y), float(w), float(h), confidence(int(n)))
        for (x, y, w, h), n in zip(boxes, counts, strict=True)
    ]


def image_uncertainty(
    detections: Sequence[Detection],
    faces: Sequence[Detection],
    faces_other: Sequence[Detection],
) -> float:
    """U of the module docstring: confidence ambiguity and face-cascade disagreement, in [0, 1].

    `detections` are what the image is pre-annotated with; `faces` and `faces_other` are the
    faces of the two cascades that are compared.
    """
    if not detections and not faces_other:
        return NO_DETECTION_UNCERTAINTY
    ambiguity = score_uncertainty([d.confidence for d in detections])
    return (ambiguity + disagreement(faces, faces_other)) / 2.0


def disagreement(a: Sequence[Detection], b: Sequence[Detection]) -> float:
    """The share of objects found by only one of `a` and `b` (greedy IoU matching)."""
    if not a and not b:
        return 0.0
    unmatched_b = list(b)
    matched = 0
    for det in sorted(a, key=lambda d: -d.confidence):
        best = max(unmatched_b, key=lambda o: iou(det, o), default=None)
        if best is not None and iou(det, best) >= MATCH_IOU:
            unmatched_b.remove(best)
            matched += 1
    union = len(a) + len(b) - matched
    return (union - matched) / union


def iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def to_regions(
    detections: Sequence[Detection], width: int, height: int, full_w: int, full_h: int
) -> list[dict[str, Any]]:
    """Label Studio regions, in percent of the image: faces as ellipses, plates as rectangles.

    `width`, `height`: the image the boxes were found on; `full_w`, `full_h`: the image as the
    annotator sees it (upright, full resolution), recorded as `original_width/height`.
    """
    out = []
    for i, d in enumerate(detections):
        common = {
            "id": f"pre{i}",
            "to_name": "image",
            "original_width": full_w,
            "original_height": full_h,
            "image_rotation": 0,
            "score": round(d.confidence, 4),
        }
        if d.label == FACE:
            value = {
                "x": percent(d.x + d.w / 2, width),
                "y": percent(d.y + d.h / 2, height),
                "radiusX": percent(d.w / 2, width),
                "radiusY": percent(d.h / 2 * FACE_HEIGHT_FACTOR, height),
                "rotation": 0,
                "ellipselabels": [FACE],
            }
            out.append({**common, "from_name": "ellipse", "type": "ellipselabels", "value": value})
        else:
            value = {
                "x": percent(d.x, width),
                "y": percent(d.y, height),
                "width": percent(d.w, width),
                "height": percent(d.h, height),
                "rotation": 0,
                "rectanglelabels": [d.label],
            }
            out.append(
                {**common, "from_name": "rectangle", "type": "rectanglelabels", "value": value}
            )
    return out
