"""A detector over the images of a COCO set, tiled as the runtime tiles, to COCO results.

`predict_set` runs a runtime detector (tiles in, `Detections` out: evaluate uses the runtime's
`serving.runtime.backends.TorchDetector`) through `serving.runtime.tiles.detect_tiled` over every
image of a COCO file, so it cuts, runs and merges exactly as the runtime will, and returns the
results in COCO's format (what `anonlab score` reads) plus the `Detections` per image. Images are
decoded upright by the runtime's reader (`serving.runtime.imagefile.read_upright`), the frame of
the ground truth and of the runtime's detections. `predict_images` does the same for a detector
that takes a whole image (the independent detectors evaluate scores as peers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from data.errors import AnonlabError
from serving.runtime.architecture import DetectorCore
from serving.runtime.backends import InputSize, TorchDetector
from serving.runtime.detections import Detections
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_upright
from serving.runtime.progress import bar
from serving.runtime.tiles import Detector, TilingSpec, detect_tiled
from training.models import load_model_files

__all__ = ["predict_images", "predict_set", "to_results", "torch_detector"]


def torch_detector(
    config: Path,
    weights: Path,
    *,
    score_threshold: float,
    tile: int,
    mask_threshold: float,
    device: Any,
    keypoints: bool,
) -> tuple[TorchDetector, dict[str, Any]]:
    """A trained model's files (`config.yaml`, `weights.safetensors`) as the runtime's own torch
    detector, for windows of `tile` px, and the model's config.

    The same tile resize, padding and mask pasting as an exported artifact (whose ONNX graph
    export checks against this), so what it finds is what the runtime would find.
    """
    model, model_cfg = load_model_files(config, weights)
    detector = TorchDetector(
        DetectorCore(model, score_threshold=score_threshold, keypoints=keypoints),
        size=InputSize.of(model_cfg["min_size"], model_cfg["max_size"], tile),
        mask_threshold=mask_threshold,
        device=device,
    )
    return detector, model_cfg


def predict_set(
    images: Sequence[dict[str, Any]],
    detector: Detector,
    spec: TilingSpec,
    *,
    images_root: Path,
    category_ids: Sequence[int],
    desc: str,
) -> tuple[list[dict[str, Any]], dict[int, Detections]]:
    """COCO results of `detector` on every image (COCO `images` entries), and the `Detections`
    per image.

    `category_ids[i]` is the ground truth's category id of model label i + 1. Image paths are
    relative to `images_root` (prepare writes every file's paths relative to `prepared/`, the
    reference sets' in `prepared/refs/` too).
    """

    def detect(rgb: np.ndarray) -> Detections:
        return detect_tiled(rgb, detector, spec)

    return predict_images(
        images, detect, images_root=images_root, category_ids=category_ids, desc=desc
    )


def predict_images(
    images: Sequence[dict[str, Any]],
    detect: Callable[[np.ndarray], Detections],
    *,
    images_root: Path,
    category_ids: Sequence[int],
    desc: str,
) -> tuple[list[dict[str, Any]], dict[int, Detections]]:
    """`predict_set` for any whole-image detector: `detect` takes an upright (H, W, 3) uint8
    RGB image and returns its detections in its pixels (an independent detector's `detect`,
    which tiles by itself)."""
    results: list[dict[str, Any]] = []
    per_image: dict[int, Detections] = {}
    for image in bar(images, desc=desc, unit="img"):
        path = images_root / image["file_name"]
        try:
            rgb = read_upright(path)
        except (OSError, ImageError) as e:
            raise AnonlabError(
                f"{desc}: image {image['id']} ({path}) cannot be read: {e}"
            ) from None
        if rgb.shape[:2] != (image["height"], image["width"]):
            # Its annotations are in another frame: scores would compare unrelated places.
            raise AnonlabError(
                f"{desc}: image {image['id']} ({path}) is {rgb.shape[1]}x{rgb.shape[0]} upright, "
                f"its ground truth says {image['width']}x{image['height']}"
            )
        dets = detect(rgb)
        per_image[image["id"]] = dets
        results.extend(to_results(dets, image["id"], rgb.shape[1], rgb.shape[0], category_ids))
    return results, per_image


def to_results(
    dets: Detections, image_id: int, width: int, height: int, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO results of one image: box, score, category, and the mask as compressed RLE.

    With a mask, the box is the mask's extent in the image (a panorama's seam wrapped), as the
    ground truth's is; a detection whose mask is empty keeps its box, clipped to the image.
    """
    out = []
    for i in range(len(dets)):
        x0, y0, x1, y1 = (float(v) for v in dets.boxes[i])
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(dets.labels[i]) - 1]),
            "score": float(dets.scores[i]),
        }
        box = [max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)]
        if dets.masks is not None:
            full = dets.full_mask(i, width, height)
            rle = mask_util.encode(np.asfortranarray(full.astype(np.uint8)))
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            if full.any():
                bx, by, bw, bh = mask_util.toBbox(rle).tolist()
                box = [bx, by, bx + bw, by + bh]
        entry["bbox"] = [box[0], box[1], max(box[2] - box[0], 0.0), max(box[3] - box[1], 0.0)]
        if dets.keypoints is not None:
            entry["keypoints"] = dets.keypoints[i].reshape(-1).astype(float).tolist()
        out.append(entry)
    return out
