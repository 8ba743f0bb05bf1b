"""Training-time augmentation: an albumentations 2.0.8 pipeline from config, applied per sample.

`build_augmenter(spec, keypoint_names=...)` turns a config list such as
`[{"name": "HorizontalFlip", "p": 0.5}, {"name": "NightDarkening", "p": 0.2}]` into an
`Augmenter`, validating every entry when built. `Augmenter(image, target)` returns the augmented
image and a target whose boxes, labels, masks and keypoints stay aligned, instance by instance.

Conventions:
- boxes are xyxy pixel edges (a box [10, 10, 20, 20] covers pixel columns and rows 10..19);
- keypoints are COCO pixel indices (x=3 is the centre of pixel column 3), the convention
  albumentations uses for flips and rotations; v is COCO visibility (0 absent, 1 occluded,
  2 visible); a keypoint with v=0, or one that leaves the image, comes out as (0, 0, 0);
- an instance whose box albumentations drops (cropped away, below `min_visibility`) loses its
  label, mask and keypoints too; an instance whose non-empty mask is cropped to nothing is dropped;
- the box of an instance with a mask is the extent of its transformed mask (after a rotation that
  is the tight box; albumentations' rotated box is looser); boxes of mask-less instances are
  albumentations' own;
- all instance masks travel as bits of one array (`training.masks.PackedMasks`), so each
  transform moves them in one call; a transform that would blend or relabel mask values
  (non-nearest `mask_interpolation`, a non-zero `fill_mask`, MaskDropout, ...) is refused
  when the pipeline is built;
- any transform that mirrors the image (a horizontal or vertical flip, a transpose, a D4 element
  with a reflection) swaps `left_*` and `right_*` keypoints, once per net reflection: an odd
  number of reflections swaps, an even number (a 180 degree rotation) does not.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError, field_validator

from data.errors import ConfigError
from training.masks import PackedMasks

# albumentations checks PyPI for a newer version on import; the platform runs offline
# (invariant 5), so turn that off unless the user asked for it explicitly.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets

__all__ = ["Augmenter", "NightDarkening", "build_augmenter"]


class NightDarkening(A.ImageOnlyTransform):
    """Make a day image look like a night capture: gamma darkening, a blue cast, sensor noise.

    Args:
        gamma_range: gamma drawn from this range; values above 1 darken mid-tones more than
            highlights (street lights and lit windows stay bright).
        blue_tint_range: strength drawn from this range; red is scaled by (1 - t), green by
            (1 - t / 2), blue left as is.
        noise_std_range: standard deviation (in 0..255 units) of the Gaussian sensor noise
            added after darkening, drawn from this range.
    """

    class InitSchema(BaseTransformInitSchema):
        gamma_range: tuple[float, float]
        blue_tint_range: tuple[float, float]
        noise_std_range: tuple[float, float]

        @field_validator("gamma_range")
        @classmethod
        def _darkening(cls, value: tuple[float, float]) -> tuple[float, float]:
            if not 1.0 <= value[0] <= value[1]:
                raise ValueError("needs 1 <= low <= high (a gamma below 1 brightens)")
            return value

        @field_validator("blue_tint_range")
        @classmethod
        def _tint(cls, value: tuple[float, float]) -> tuple[float, float]:
            if not 0.0 <= value[0] <= value[1] <= 1.0:
                raise ValueError("needs 0 <= low <= high <= 1")
            return value

        @field_validator("noise_std_range")
        @classmethod
        def _noise(cls, value: tuple[float, float]) -> tuple[float, float]:
            if not 0.0 <= value[0] <= value[1]:
                raise ValueError("needs 0 <= low <= high")
            return value

    def __init__(
        self,
        gamma_range: tuple[float, float] = (1.8, 3.0),
        blue_tint_range: tuple[float, float] = (0.05, 0.2),
        noise_std_range: tuple[float, float] = (2.0, 8.0),
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.gamma_range = gamma_range
        self.blue_tint_range = blue_tint_range
        self.noise_std_range = noise_std_range

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        # Draw from the generators Compose seeds, so a seeded pipeline repeats exactly. The
        # noise is one uniform byte per pixel, turned Gaussian by a quantile table in `apply`:
        # ten times cheaper than drawing normal floats, and 256 levels are plenty for grain.
        height, width = params["shape"][:2]
        uniform = np.frombuffer(self.random_generator.bytes(height * width), np.uint8)
        return {
            "gamma": self.py_random.uniform(*self.gamma_range),
            "tint": self.py_random.uniform(*self.blue_tint_range),
            "noise_std": self.py_random.uniform(*self.noise_std_range),
            "uniform": uniform.reshape(height, width),
        }

    def apply(
        self,
        img: np.ndarray,
        gamma: float,
        tint: float,
        noise_std: float,
        uniform: np.ndarray,
        **params: Any,
    ) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"NightDarkening expects an HxWx3 uint8 RGB image, got {img.shape}")
        # Gamma and tint are a per-channel lookup table: one pass over the image.
        levels = np.power(np.arange(256, dtype=np.float32) / 255.0, gamma) * 255.0
        scale = np.array([1.0 - tint, 1.0 - tint / 2.0, 1.0], dtype=np.float32)
        lut = np.clip(np.rint(levels[:, None] * scale), 0, 255).astype(np.uint8)
        dark = cv2.LUT(np.ascontiguousarray(img), lut.reshape(256, 1, 3))
        # One noise value per pixel for all channels (luminance noise, as a dark sensor shows),
        # split into its positive and negative parts so saturating uint8 adds do the clipping.
        noise = _GAUSSIAN_QUANTILES * noise_std
        up = cv2.LUT(uniform, np.clip(np.rint(noise), 0, 255).astype(np.uint8))
        down = cv2.LUT(uniform, np.clip(np.rint(-noise), 0, 255).astype(np.uint8))
        dark = cv2.add(dark, cv2.merge([up, up, up]))
        return cv2.subtract(dark, cv2.merge([down, down, down]))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gamma_range", "blue_tint_range", "noise_std_range")


# Standard normal quantiles at the centres of 256 equal-probability bins: a uniform byte looked up
# here is a draw from a (256-level) standard normal distribution.
_GAUSSIAN_QUANTILES = np.array(
    [NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32
)

_OWN_TRANSFORMS: dict[str, type[A.BasicTransform]] = {"NightDarkening": NightDarkening}
# Base classes albumentations exports that are not usable transforms by themselves.
_NOT_TRANSFORMS = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D"}


def _transform_classes() -> dict[str, type[A.BasicTransform]]:
    classes: dict[str, type[A.BasicTransform]] = {}
    for name in dir(A):
        obj = getattr(A, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, A.BasicTransform)
            and not issubclass(obj, A.Transform3D)
            and name not in _NOT_TRANSFORMS
        ):
            classes[name] = obj
    classes.update(_OWN_TRANSFORMS)
    return classes


def _targets_of(cls: type[A.BasicTransform]) -> set[Targets]:
    targets = getattr(cls, "_targets", ())
    return set(targets) if isinstance(targets, tuple | list) else {targets}


class Augmenter:
    """Applies a built pipeline to one sample and keeps the instance targets consistent."""

    def __init__(self, compose: A.Compose, keypoint_names: Sequence[str], swap: np.ndarray) -> None:
        self.compose = compose
        self.keypoint_names = list(keypoint_names)
        self._swap = swap

    def set_seed(self, seed: int | None) -> None:
        """Reseed the pipeline, e.g. with base seed + worker id in a DataLoader worker.

        albumentations 2.0.8 does not mix the worker id in itself: workers that inherit one
        seeded Augmenter would all draw the same augmentations.
        """
        self.compose.set_random_seed(seed)

    def __call__(
        self, image: np.ndarray, target: Mapping[str, Any]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Augment one sample. `target["masks"]` is an (N, H, W) array or `PackedMasks`; the
        returned masks are (N', H', W') uint8 0/1 for the N' instances kept, in input order."""
        height, width = image.shape[:2]
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], dtype=np.int64).reshape(-1)
        n = len(boxes)
        k = len(self.keypoint_names)
        masks = target["masks"]
        if not isinstance(masks, PackedMasks):
            masks = PackedMasks.from_dense(
                np.asarray(masks, dtype=np.uint8).reshape(n, height, width)
            )
        keypoints = np.asarray(target["keypoints"], dtype=np.float32).reshape(n, k, 3)
        if len(labels) != n or masks.count != n or masks.shape != (height, width):
            raise ValueError(
                f"{n} boxes, {len(labels)} labels and {masks.count} masks of "
                f"{masks.shape} for an image of {(height, width)}"
            )

        # Visible keypoints travel with their flat index (instance * K + keypoint) as label, so
        # the mapping back does not depend on albumentations keeping their order or count.
        visible = np.flatnonzero(keypoints[..., 2].reshape(-1) > 0)
        points = keypoints[..., :2].reshape(-1, 2)[visible]
        # Three probe points whose orientation tells whether the net transform mirrored.
        probes = _probe_points(height, width)
        out = self.compose(
            image=image,
            # All instances as bits of one array: one move per transform, whatever N is.
            mask=masks.bits,
            bboxes=boxes,
            instance_index=np.arange(n),
            keypoints=np.concatenate([points, probes]),
            keypoint_index=np.concatenate([visible, -1 - np.arange(len(probes))]),
        )

        new_image = out["image"]
        new_h, new_w = new_image.shape[:2]
        kept = np.asarray(out["instance_index"], dtype=np.int64).reshape(-1)
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)[:, :4]
        bits = np.asarray(out["mask"], dtype=np.uint8).reshape(new_h, new_w, -1)
        moved = PackedMasks(np.ascontiguousarray(bits), n)
        _, had_mask = masks.boxes()
        mask_boxes, has_mask = moved.boxes()
        # The box of an instance with pixels is their extent; an instance whose pixels were all
        # cropped away is gone, whatever its box says.
        with_pixels = has_mask[kept]
        new_boxes[with_pixels] = mask_boxes[kept[with_pixels]]
        alive = ~had_mask[kept] | with_pixels
        kept, new_boxes = kept[alive], new_boxes[alive]
        new_masks = moved.dense(kept, mask_boxes[kept])

        flat = np.zeros((n * k, 3), np.float32)
        moved_points = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2)
        ids = np.asarray(out["keypoint_index"], dtype=np.int64).reshape(-1)
        real = ids >= 0
        flat[ids[real], :2] = moved_points[real]
        flat[ids[real], 2] = keypoints.reshape(-1, 3)[ids[real], 2]
        new_keypoints = flat.reshape(n, k, 3)[kept]
        inside = (
            (new_keypoints[..., 0] >= 0)
            & (new_keypoints[..., 0] < new_w)
            & (new_keypoints[..., 1] >= 0)
            & (new_keypoints[..., 1] < new_h)
        )
        new_keypoints[~inside] = 0.0
        if _mirrored(probes, moved_points[~real], ids[~real]):
            new_keypoints = new_keypoints[:, self._swap]

        result = {
            "boxes": new_boxes.astype(np.float32),
            "labels": labels[kept],
            "masks": new_masks,
            "keypoints": new_keypoints,
        }
        if "instance_ids" in target:
            result["instance_ids"] = np.asarray(target["instance_ids"])[kept]
        return new_image, result


def _probe_points(height: int, width: int) -> np.ndarray:
    cx, cy = width / 2.0, height / 2.0
    d = max(1.0, min(height, width) / 8.0)
    return np.array([[cx, cy], [cx + d, cy], [cx, cy + d]], dtype=np.float32)


def _mirrored(before: np.ndarray, after: np.ndarray, ids: np.ndarray) -> bool:
    """True when the probe triangle's orientation flipped (an odd number of reflections)."""
    if len(after) != len(before):
        # A transform dropped a probe (none of the geometric ones in 2.0.8 do with
        # remove_invisible=False); without all three the orientation is unknown.
        raise RuntimeError("augmentation lost a reflection probe point; cannot tell mirroring")
    after = after[np.argsort(-1 - ids)]

    def signed_area(p: np.ndarray) -> float:
        (x0, y0), (x1, y1), (x2, y2) = p
        return float((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0))

    return signed_area(after) * signed_area(before) < 0


def _swap_permutation(keypoint_names: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(keypoint_names)}
    perm = np.arange(len(keypoint_names))
    for name, i in index.items():
        for side, other in (("left_", "right_"), ("right_", "left_")):
            partner = other + name[len(side) :]
            if name.startswith(side) and partner in index:
                perm[i] = index[partner]
    return perm


def build_augmenter(
    spec: Sequence[Mapping[str, Any]],
    *,
    keypoint_names: Sequence[str],
    min_visibility: float = 0.0,
    seed: int | None = None,
    where: str = "augment",
) -> Augmenter:
    """Build the pipeline from `spec`, one `{"name": ..., **arguments}` entry per transform.

    Names are albumentations transform classes (`A.<name>`) or `NightDarkening`. Every entry is
    constructed here, so an unknown name or a bad argument is a ConfigError before training
    starts; `where` is the config key the spec came from, used in those messages.
    """
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"min_visibility = {min_visibility!r}: must be between 0 and 1")
    classes = _transform_classes()
    transforms = [_build_one(entry, f"{where}[{i}]", classes) for i, entry in enumerate(spec)]
    with warnings.catch_warnings():
        # A photometric-only pipeline has no transform for boxes or keypoints; that is fine.
        warnings.filterwarnings("ignore", message="Got processor for .* but no transform")
        compose = _compose(transforms, min_visibility, seed)
    return Augmenter(compose, keypoint_names, _swap_permutation(keypoint_names))


def _compose(
    transforms: list[A.BasicTransform], min_visibility: float, seed: int | None
) -> A.Compose:
    return A.Compose(
        transforms,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["instance_index"],
            min_visibility=min_visibility,
            # Annotated boxes may poke a fraction of a pixel out of the image; clip them
            # instead of failing the sample.
            clip=True,
            filter_invalid_bboxes=True,
        ),
        keypoint_params=A.KeypointParams(
            format="xy", label_fields=["keypoint_index"], remove_invisible=False
        ),
        seed=seed,
    )


def _build_one(
    entry: Mapping[str, Any], where: str, classes: Mapping[str, type[A.BasicTransform]]
) -> A.BasicTransform:
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(
            f"{where} = {entry!r}: each entry needs a 'name' (an albumentations transform, "
            "e.g. HorizontalFlip) and its arguments, e.g. {name: HorizontalFlip, p: 0.5}"
        )
    name = entry["name"]
    args = {key: value for key, value in entry.items() if key != "name"}
    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None:
        by_lower = {n.lower(): n for n in classes}
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
        raise ConfigError(
            f"{where}.name = {name!r}: unknown transform; {hint}Names are albumentations "
            f"{A.__version__} transform classes (A.<name>, e.g. HorizontalFlip, "
            "RandomResizedCrop, ColorJitter) or NightDarkening"
        )
    if issubclass(cls, A.DualTransform):
        missing = {Targets.MASK, Targets.BBOXES, Targets.KEYPOINTS} - _targets_of(cls)
        if missing:
            names = ", ".join(sorted(t.value.lower() for t in missing))
            raise ConfigError(
                f"{where}.name = {name!r}: this transform cannot move {names}, so the targets "
                "would no longer match the image; use another transform"
            )

    params = {
        p.name: p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in {"self", "strict"} and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for key in args:
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{where}.{key} = {args[key]!r}: {name} has no argument {key!r}; {hint}"
                f"its arguments are: {', '.join(params)}"
            )
    for key, p in params.items():
        if p.default is p.empty and key not in args:
            raise ConfigError(f"{where}.{key}: {name} needs the argument {key!r}")

    try:
        # albumentations warns and falls back to defaults on some bad values; make that loud.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            transform = cls(**args)
    except (ValueError, TypeError, Warning) as e:
        raise ConfigError(_describe(e, where, name)) from None
    _check_moves_bits(transform, where, name)
    return transform


# Transforms that read mask values as class labels or replace masks wholesale: with instances as
# bits of one array (training.masks.PackedMasks) they would mix instances up.
_READS_MASK_VALUES = {
    "ConstrainedCoarseDropout": "it picks regions by mask class values",
    "Lambda": "what it does to masks cannot be checked",
    "MaskDropout": "it treats mask values as object labels",
    "Mosaic": "it needs extra images in its metadata, which the loader does not supply",
    "OverlayElements": "it pastes masks from its metadata",
}


def _check_moves_bits(transform: A.BasicTransform, where: str, name: str) -> None:
    """Refuse settings under which masks stop being exact instance bits.

    The augmenter moves all instance masks as bits of one array, so a transform may move mask
    pixels (nearest interpolation) and fill with 0, but never blend or relabel them.
    """
    if not isinstance(transform, A.DualTransform):
        return
    if name in _READS_MASK_VALUES:
        raise ConfigError(
            f"{where}.name = {name!r}: not usable for instance masks: {_READS_MASK_VALUES[name]}"
        )
    interpolation = getattr(transform, "mask_interpolation", cv2.INTER_NEAREST)
    if interpolation not in (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
        raise ConfigError(
            f"{where}.mask_interpolation = {interpolation!r}: instance masks are moved as exact "
            f"bits; use 0 (cv2.INTER_NEAREST), which {name} uses by default"
        )
    for key in ("fill_mask", "mask_drop_value"):
        value = getattr(transform, key, None)
        if value is not None and np.any(np.asarray(value) != 0):
            raise ConfigError(
                f"{where}.{key} = {value!r}: a filled area belongs to no instance; "
                "leave it unset or 0"
            )
    for key in ("ignore_values", "ignore_channels"):
        if getattr(transform, key, None):
            raise ConfigError(
                f"{where}.{key} = {getattr(transform, key)!r}: instance masks carry no class "
                "values or channels to ignore; leave it unset"
            )


def _describe(error: BaseException, where: str, name: str) -> str:
    """One line per bad argument: where it is, its value, why albumentations refused it."""
    cause = error.__cause__
    if not isinstance(cause, ValidationError):
        return f"{where}: bad arguments for {name}: {error}"
    reasons: dict[str, tuple[Any, list[str]]] = {}
    for err in cause.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        msg = err["msg"].removeprefix("Value error, ")
        _, msgs = reasons.setdefault(key, (err.get("input"), []))
        # pydantic reports each member of a Union separately; say them once, joined by "or".
        if msg not in msgs:
            msgs.append(msg)
    return "; ".join(
        f"{where}.{key} = {value!r}: bad argument for {name}: {' or '.join(msgs)}"
        for key, (value, msgs) in reasons.items()
    )
