"""Training data: a prepared COCO file as a torch Dataset of torchvision detection targets.

`CocoDetection` reads one COCO file written by `prepare` (images relative to the file's folder,
masks as RLE, person keypoints; every image decoded upright by the runtime's
`serving.runtime.imagefile.read_upright`, the frame of the annotations), applies the augmenter
to numpy arrays and returns `(image CxHxW uint8, target)`. Images stay uint8 until they reach
the model's device: a quarter of the bytes between loader processes, and no float pass on the
loader's core (the trainer converts with `images_to_float`). `GroupedBatchSampler` batches
images of one aspect-ratio group together, so padding a batch to its largest image wastes
little; `collate` keeps images and targets as lists, as torchvision's detection models take them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset, get_worker_info

from data.errors import AnonlabError
from data.image_info import read_upright_sized
from training.augment import Augmenter
from training.masks import MaskCrop, PackedMasks, decode_crop

__all__ = [
    "CocoDetection",
    "GroupedBatchSampler",
    "aspect_ratio_groups",
    "collate",
    "images_to_float",
    "worker_init_fn",
]

log = logging.getLogger(__name__)

Target = dict[str, torch.Tensor]


class CocoDetection(Dataset[tuple[torch.Tensor, Target]]):
    """One sample per COCO image, annotated or not (empty tiles are negatives, kept on purpose).

    Targets: `boxes` (N, 4) float32 xyxy, `labels` (N,) int64 (1..m in `model_classes` order;
    by default all the file's classes, whose ids are 1..n in `classes` order),
    `masks` (N, H, W) uint8, `keypoints` (N, K, 3) float32 (zeros for instances without any;
    only when `keypoints` is true), `image_id` int64, `area` (N,) float32, `iscrowd` (N,) int64.
    """

    def __init__(
        self,
        coco_file: Path,
        *,
        classes: Sequence[str],
        keypoint_names: Sequence[str],
        augmenter: Augmenter | None = None,
        keypoints: bool = True,
        model_classes: Sequence[str] | None = None,
    ) -> None:
        self.coco_file = Path(coco_file)
        self.root = self.coco_file.parent
        self.classes = list(classes)
        self.keypoint_names = list(keypoint_names)
        self.augmenter = augmenter
        self.keypoints = keypoints
        try:
            coco = json.loads(self.coco_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AnonlabError(f"{self.coco_file}: COCO file not found; run prepare") from None
        _check_categories(coco.get("categories", []), self.classes, self.coco_file)
        self.images: list[dict[str, Any]] = list(coco["images"])
        self.annotations: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        # A model may detect a subset of the file's classes (Keypoint R-CNN: persons only): its
        # labels are 1..m in `model_classes` order and other classes' annotations are left out.
        self.model_classes = list(model_classes) if model_classes is not None else self.classes
        unknown = [c for c in self.model_classes if c not in self.classes]
        if unknown:
            raise AnonlabError(f"model classes {unknown} are not in {self.coco_file}'s classes")
        relabel = {self.classes.index(c) + 1: i + 1 for i, c in enumerate(self.model_classes)}
        for ann in coco["annotations"]:
            if ann["category_id"] in relabel:
                self.annotations[ann["image_id"]].append(
                    {**ann, "category_id": relabel[ann["category_id"]]}
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) per image, from the COCO file: grouping needs no decoding."""
        return [(img["width"], img["height"]) for img in self.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info = self.images[index]
        path = self.root / info["file_name"]
        if not path.is_file():
            raise AnonlabError(f"{path}: image file not found (named in the COCO file)")
        image = read_upright_sized(
            path,
            info["width"],
            info["height"],
            said="the COCO file says",
            unreadable="",
            other_size="run prepare again",
        )
        height, width = image.shape[:2]
        anns = self.annotations[info["id"]]
        target, crops = _instances(anns, height, width, len(self.keypoint_names))
        if self.augmenter is None:
            target["masks"] = _paste(crops, height, width)
        else:
            # Masks go in as bits of one array; the augmenter passes `instance_ids` through for
            # the instances it keeps, so area and iscrowd can follow.
            target["masks"] = PackedMasks.from_crops(crops, height, width)
            image, out = self.augmenter(image, {**target, "instance_ids": np.arange(len(anns))})
            kept = out.pop("instance_ids")
            out["iscrowd"] = target["iscrowd"][kept]
            # Crops and resizes change the area; the mask's pixel count is the new one.
            out["area"] = _areas(out["masks"], out["boxes"])
            target = out
        target = _without_empty_boxes(target)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        result: Target = {
            "boxes": torch.from_numpy(target["boxes"]).reshape(-1, 4),
            "labels": torch.from_numpy(target["labels"]),
            "masks": torch.from_numpy(target["masks"]),
            "image_id": torch.tensor(info["id"], dtype=torch.int64),
            "area": torch.from_numpy(target["area"]),
            "iscrowd": torch.from_numpy(target["iscrowd"]),
        }
        if self.keypoints:
            result["keypoints"] = torch.from_numpy(target["keypoints"])
        return tensor, result


def images_to_float(
    images: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """uint8 CxHxW images (as the dataset yields them) to float32 in [0, 1] on `device`,
    the input torchvision's detection models take. The copy goes over as uint8."""
    return [image.to(device, non_blocking=True).to(torch.float32).div_(255.0) for image in images]


def _without_empty_boxes(target: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop instances whose box has no width or height (an empty mask, a degenerate box):
    torchvision's detection models refuse them, and they carry nothing to learn from."""
    boxes = target["boxes"].reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if keep.all():
        return target
    return {
        k: (v[keep] if k != "image_id" and len(v) == len(keep) else v) for k, v in target.items()
    }


def _check_categories(categories: list[dict[str, Any]], classes: list[str], where: Path) -> None:
    ordered = sorted(categories, key=lambda c: c["id"])
    names = [c["name"] for c in ordered]
    ids = [c["id"] for c in ordered]
    # Labels are the file's category ids, so they must be 1..n in the order of `classes`.
    if names != classes or ids != list(range(1, len(classes) + 1)):
        raise AnonlabError(
            f"{where}: the COCO categories {names} (ids {ids}) differ from the model's classes "
            f"{classes} (ids 1..{len(classes)}); re-run prepare with the same taxonomy.classes"
        )


def _instances(
    anns: list[dict[str, Any]], height: int, width: int, num_keypoints: int
) -> tuple[dict[str, np.ndarray], list[MaskCrop | None]]:
    """The targets without masks, and each instance's mask as a box crop (None: box only)."""
    n = len(anns)
    boxes = np.zeros((n, 4), np.float32)
    keypoints = np.zeros((n, num_keypoints, 3), np.float32)
    for i, ann in enumerate(anns):
        x, y, w, h = ann["bbox"]
        boxes[i] = (x, y, x + w, y + h)
        if ann.get("keypoints") and ann.get("num_keypoints", 1):
            keypoints[i] = np.asarray(ann["keypoints"], np.float32).reshape(num_keypoints, 3)
    return {
        "boxes": boxes,
        "labels": np.array([a["category_id"] for a in anns], np.int64),
        "keypoints": keypoints,
        "area": np.array([a.get("area", 0.0) for a in anns], np.float32),
        "iscrowd": np.array([a.get("iscrowd", 0) for a in anns], np.int64),
    }, [_crop(ann, height, width) for ann in anns]


def _crop(ann: dict[str, Any], height: int, width: int) -> MaskCrop | None:
    seg = ann.get("segmentation")
    if not seg:
        return None  # a box-only instance: an empty mask, as torchvision expects one per box
    try:
        return decode_crop(seg, height, width)
    except (ValueError, KeyError, TypeError) as e:
        raise AnonlabError(f"annotation {ann.get('id')}: bad segmentation: {e}") from None


def _paste(crops: Sequence[MaskCrop | None], height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(crops), height, width), np.uint8)
    for i, crop in enumerate(crops):
        if crop is not None:
            x0, y0, x1, y1 = crop.box
            masks[i, y0:y1, x0:x1] = crop.pixels
    return masks


def _areas(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mask pixel counts; the box area for a box-only instance. A mask's box is its extent
    (the augmenter sets it so), so counting inside the box counts the whole mask."""
    pixels = np.array(
        [
            cv2.countNonZero(m[int(y0) : math.ceil(y1), int(x0) : math.ceil(x1)])
            for m, (x0, y0, x1, y1) in zip(masks, boxes.tolist(), strict=True)
        ],
        np.float32,
    )
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(pixels > 0, pixels, box_area).astype(np.float32)


def collate(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """Lists of images and targets: detection models take images of different sizes."""
    return [image for image, _ in batch], [target for _, target in batch]


def aspect_ratio_groups(
    dataset: CocoDetection | Subset[Any], bins: Sequence[float] = (1.0,)
) -> list[int]:
    """Group id per image from its width/height ratio: by default 0 portrait, 1 landscape/square.

    `bins` are the ratio edges (ascending); an image with ratio r is in group
    `sum(r >= edge for edge in bins)`. Sizes come from the COCO file; no image is decoded.
    """
    if isinstance(dataset, Subset):
        sizes = _sizes(dataset.dataset)
        sizes = [sizes[i] for i in dataset.indices]
    else:
        sizes = _sizes(dataset)
    edges = sorted(bins)
    return [sum(w / h >= edge for edge in edges) for w, h in sizes]


def _sizes(dataset: Any) -> list[tuple[int, int]]:
    """(width, height) per image of a dataset that exposes `image_sizes`."""
    sizes = getattr(dataset, "image_sizes", None)
    if sizes is None:
        raise TypeError(f"{type(dataset).__name__} has no image_sizes; cannot group by aspect")
    return list(sizes)


class GroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose images share a group; every index exactly once per epoch.

    Indices are drawn in a random order from `generator`; each goes into its group's bucket and a
    full bucket is yielded as a batch. The incomplete bucket of each group is yielded at the end
    of the epoch (in group order), so no image is skipped. Seed `generator` for a repeatable
    order; successive epochs draw new orders from it.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: must be at least 1")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        generator = self.generator
        if generator is None:
            # Unseeded: draw a seed from torch's global RNG, as RandomSampler does.
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(len(self.group_ids), generator=generator).tolist()
        buckets: dict[int, list[int]] = {}
        for index in order:
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[self.group_ids[index]] = []
        for group in sorted(buckets):
            if buckets[group]:
                yield buckets[group]

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for group in self.group_ids:
            counts[group] = counts.get(group, 0) + 1
        return sum(math.ceil(c / self.batch_size) for c in counts.values())


def worker_init_fn(worker_id: int, base_seed: int | None = None) -> None:
    """Reseed the dataset's augmenter in a DataLoader worker.

    Use `functools.partial(worker_init_fn, base_seed=s)` for augmenter seeds `s + worker_id`;
    these repeat every epoch unless the workers are persistent. With `base_seed=None` the
    worker's torch seed is used, which the DataLoader draws anew each epoch (and from its
    `generator`, so a seeded loader still repeats).
    """
    info = get_worker_info()
    if info is None:
        return
    dataset = info.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    augmenter = getattr(dataset, "augmenter", None)
    if augmenter is None:
        return
    seed = info.seed if base_seed is None else base_seed + worker_id
    # albumentations seeds numpy's generator, which takes 32-bit seeds only.
    augmenter.set_seed(seed % 2**32)
    log.debug("worker %d: augmenter seed %d", worker_id, seed % 2**32)
