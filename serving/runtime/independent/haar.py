"""OpenCV's Haar cascades: a second, weaker independent detector, for faces and plates.

Origin: the cascades bundled with OpenCV (`cv2.data.haarcascades`, shipped in the
opencv-python-headless wheel the runtime already depends on; OpenCV's licence, Apache 2.0, with
the cascades' own Intel licence terms in each file): `haarcascade_frontalface_default.xml`
(frontal faces) and `haarcascade_russian_plate_number.xml` (Russian plates, the only plate
cascade OpenCV ships; it finds other long plates too, less often). Each file must have the
sha256 in `CASCADES` (those of OpenCV 4.x's files). Frontal faces only, no profiles, and far
lower recall than CenterFace: a floor, not a judge.

The cascades look at the equalised grey image reduced to a long side of at most `max_side`
pixels (a full panorama would take minutes), so the smallest face found is about 12 px there.
A detection's confidence is n / (n + 8), n the raw detections it merged (`confidence`).
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from serving.runtime.checksum import file_sha256
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError

__all__ = ["CASCADES", "Haar", "cascade", "confidence"]

# file -> sha256, as OpenCV 4.x's wheels ship them.
CASCADES = {
    "haarcascade_frontalface_default.xml": (
        "0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0"
    ),
    "haarcascade_frontalface_alt2.xml": (
        "7b0c967d9abbdfbde025eb9c786947d151b6426040d07a8f9562ed8fd90724b4"
    ),
    "haarcascade_russian_plate_number.xml": (
        "814cb5954682af570e58361f9e5f8b5b513a4112776bb9ecacef9f0e4ca6c2d7"
    ),
}
# c = n / (n + NEIGHBOUR_SCALE): more merged raw detections, surer.
NEIGHBOUR_SCALE = 8.0


def cascade(name: str) -> Any:
    """One of OpenCV's bundled cascades (a key of `CASCADES`), its sha256 checked."""
    path = os.path.join(cv2.data.haarcascades, name)
    if not os.path.isfile(path):
        raise ArtifactError(
            f"OpenCV's Haar cascade {name} is missing from {cv2.data.haarcascades}: reinstall "
            "opencv-python-headless"
        )
    found = file_sha256(path)
    if found != CASCADES[name]:
        raise ArtifactError(
            f"{path}: sha256 {found} is not that of the cascade anonlab checks "
            f"({CASCADES[name]}); reinstall opencv-python-headless 4.x"
        )
    loaded = cv2.CascadeClassifier(path)
    if loaded.empty():
        raise ArtifactError(f"{path}: OpenCV cannot load this cascade")
    return loaded


def confidence(neighbours: int) -> float:
    """A cascade detection's confidence from how many raw detections it merged."""
    n = max(0, neighbours)
    return n / (n + NEIGHBOUR_SCALE)


class Haar:
    """Faces and plates by OpenCV's Haar cascades (see the module docstring)."""

    name = "haar"
    classes = ("face", "license_plate")
    licence = "Apache 2.0 (OpenCV) with Intel's cascade licence terms"

    def __init__(self, *, max_side: int = 2048) -> None:
        self.max_side = max_side
        self._face = cascade("haarcascade_frontalface_default.xml")
        self._plate = cascade("haarcascade_russian_plate_number.xml")

    def detect(self, rgb: np.ndarray) -> Detections:
        """Faces (label 1) and plates (label 2) in an upright RGB image, in its pixels."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        found = [
            _run(self._face, grey, 1, (12, 12)),
            _run(self._plate, grey, 2, (24, 8)),
        ]
        boxes = np.concatenate([b for b, _, _ in found]) / np.float32(scale)
        return Detections(
            boxes.astype(np.float32),
            np.concatenate([s for _, s, _ in found]),
            np.concatenate([la for _, _, la in found]),
        )


def _run(
    classifier: Any, grey: np.ndarray, label: int, min_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rects, counts = classifier.detectMultiScale2(
        grey, scaleFactor=1.1, minNeighbors=3, minSize=min_size
    )
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    scores = np.array([confidence(int(n)) for n in np.asarray(counts).ravel()], np.float32)
    return boxes, scores, np.full(len(boxes), label, np.int64)
