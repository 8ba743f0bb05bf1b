"""A trained model over the images of a COCO set, tiled as the runtime tiles, to COCO results.

`TorchDetector` turns a torchvision detection model into the runtime's detector (tiles in,
`Detections` out), so `serving.runtime.tiles.detect_tiled` cuts, runs and merges exactly as the
runtime will; `predict_set` runs it over every image of a COCO file and returns the results in
COCO's format (what `anonlab score` reads) plus the `Detections` per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util

from data.errors import AnonlabError
from serving.runtime.detections import Detections, mask_window
from serving.runtime.progress import bar
from serving.runtime.tiles import TilingSpec, detect_tiled
from training.dataset import images_to_float

__all__ = ["TorchDetector", "predict_set", "to_results"]


class TorchDetector:
    """Tiles (HxWx3 uint8 RGB) in, one `Detections` per tile out, in tile pixels.

    Masks are the model's per-pixel probabilities at or above `mask_threshold`, cut to each box's
    `mask_window`. Detections scoring below `score_threshold` are dropped by the model itself
    (roi_heads.score_thresh), so the low end of the precision/recall curve is there to choose an
    operating threshold from.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        score_threshold: float,
        mask_threshold: float = 0.5,
        keypoints: bool = False,
    ) -> None:
        self.model = model.to(device).eval()
        self.model.roi_heads.score_thresh = score_threshold
        if not keypoints:
            # torchvision runs the keypoint branch only when it has a keypoint RoI pooler.
            self.model.roi_heads.keypoint_roi_pool = None
        self.device = device
        self.mask_threshold = mask_threshold

    @torch.inference_mode()
    def __call__(self, tiles: list[np.ndarray]) -> list[Detections]:
        if not tiles:
            return []
        tensors = [torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1) for t in tiles]
        outputs = self.model(images_to_float(tensors, self.device))
        return [
            self._detections(out, tile.shape[:2]) for out, tile in zip(outputs, tiles, strict=True)
        ]

    def _detections(self, out: dict[str, torch.Tensor], shape: tuple[int, ...]) -> Detections:
        boxes = out["boxes"].float().cpu().numpy()
        masks = None
        if "masks" in out:
            height, width = shape
            probs = out["masks"][:, 0]
            masks = []
            for i, box in enumerate(boxes):
                x0, y0, x1, y1 = mask_window(box)
                crop = np.zeros((y1 - y0, x1 - x0), bool)
                # torchvision clips boxes to the tile; the window can still end one pixel out.
                cx1, cy1 = min(x1, width), min(y1, height)
                inside = probs[i, y0:cy1, x0:cx1] >= self.mask_threshold
                crop[: cy1 - y0, : cx1 - x0] = inside.cpu().numpy()
                masks.append(crop)
        keypoints = None
        if "keypoints" in out:
            kp = out["keypoints"].float().cpu().numpy().copy()
            kp[..., 2] = out["keypoints_scores"].float().cpu().numpy()
            keypoints = kp
        return Detections(
            boxes=boxes,
            scores=out["scores"].float().cpu().numpy(),
            labels=out["labels"].cpu().numpy(),
            masks=masks,
            keypoints=keypoints,
        )


def predict_set(
    images: Sequence[dict[str, Any]],
    detector: TorchDetector,
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
    results: list[dict[str, Any]] = []
    per_image: dict[int, Detections] = {}
    for image in bar(images, desc=desc, unit="img"):
        path = images_root / image["file_name"]
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
        if rgb is None:
            raise AnonlabError(f"{desc}: image {image['id']} ({path}) cannot be read")
        dets = detect_tiled(rgb, detector, spec)
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
