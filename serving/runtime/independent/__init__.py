"""Independent detectors: detectors anonlab did not train, as a second opinion on its models and
on what they anonymized (`anonlab audit`).

Each has a `name`, the `classes` it finds, its `licence`, and `detect(rgb) -> Detections`: an
upright (H, W, 3) uint8 RGB image in, detections in its pixels out, label i + 1 being
classes[i]. Each module's docstring says where its weights come from; loading checks their
sha256. `centerface` (faces; `centerface.py`) and `haar` (faces and plates; `haar.py`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from serving.runtime.detections import Detections

__all__ = ["NAMES", "IndependentDetector", "load_detector", "parse_names"]

NAMES = ("centerface", "haar")


class IndependentDetector(Protocol):
    name: str
    classes: tuple[str, ...]
    licence: str

    def detect(self, rgb: np.ndarray) -> Detections: ...


def load_detector(name: str, **options: Any) -> IndependentDetector:
    """The independent detector called `name` (one of `NAMES`), loaded and checked."""
    if name == "centerface":
        from serving.runtime.independent.centerface import CenterFace

        return CenterFace(**options)
    if name == "haar":
        from serving.runtime.independent.haar import Haar

        return Haar(**options)
    raise ValueError(f"independent detector {name!r}: use one of {', '.join(NAMES)}")


def parse_names(text: str) -> list[str]:
    """Comma-separated detector names, each known and once; ValueError naming what is not."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ValueError(
            f"detectors {text!r}: give one or more of {', '.join(NAMES)}, comma-separated"
        )
    return list(dict.fromkeys(names))
