"""Near-duplicate frames: the previous frame again, as a stopped vehicle takes it."""

from __future__ import annotations

from datetime import timedelta

import cv2
import numpy as np

from data.config import SyntheticConfig
from data.synthetic.compose import substantial
from data.synthetic.degrade import sensor_noise
from data.synthetic.images import SyntheticImage, SyntheticObject
from data.synthetic.patches import shift_pixels
from data.synthetic.plan import FRAME_SECONDS, FRAME_STREAM, Plan, stream_rng


def near_duplicate(cfg: SyntheticConfig, plan: Plan, base: SyntheticImage) -> SyntheticImage:
    """The previous frame again, as a stopped vehicle takes it: a pixel or two to the side,
    a touch darker and softer (so review keeps the original), fresh sensor noise."""
    rng = stream_rng(cfg, FRAME_STREAM, plan.index)
    wrap = base.panorama
    dx = int(rng.choice([-2, -1, 1, 2]))
    dy = 0 if wrap else int(rng.choice([-1, 0, 1]))
    image = shift_pixels(base.image, dx, dy, wrap).astype(np.float32)
    image = cv2.GaussianBlur(image * 0.93, (0, 0), 0.6)
    image += sensor_noise(rng, image.shape, 1.0)
    return SyntheticImage(
        index=plan.index,
        name=f"drive-{plan.session:03d}/frame-{plan.frame:04d}.jpg",
        session=base.session,
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        objects=_shift_objects(base.objects, dx, dy, wrap, base.width, base.height),
        panorama=base.panorama,
        kind=plan.kind,
        captured_at=base.captured_at + timedelta(seconds=FRAME_SECONDS),
        gps=base.gps,  # stopped
    )


def _shift_objects(
    objects: list[SyntheticObject], dx: int, dy: int, wrap: bool, width: int, height: int
) -> list[SyntheticObject]:
    kept: list[SyntheticObject] = []
    ids: dict[int, int] = {}
    for obj in objects:
        mask = shift_pixels(obj.mask, dx, dy, wrap)
        if (obj.parent_id is not None and obj.parent_id not in ids) or not substantial(mask):
            continue
        ids[obj.instance_id] = len(kept) + 1
        keypoints = {}
        for name, (x, y, v) in obj.keypoints.items():
            x, y = (x + dx) % width if wrap else x + dx, y + dy
            inside = v > 0 and 0 <= x < width and 0 <= y < height
            keypoints[name] = (float(x), float(y), v) if inside else (0.0, 0.0, 0)
        kept.append(
            SyntheticObject(
                label=obj.label,
                mask=mask,
                instance_id=ids[obj.instance_id],
                keypoints=keypoints,
                text=obj.text,
                parent_id=None if obj.parent_id is None else ids[obj.parent_id],
                depth=obj.depth,
                ellipse=_moved(obj.ellipse, dx, dy, wrap, width),
                rect=_moved(obj.rect, dx, dy, wrap, width),
                amodal=None if obj.amodal is None else obj.amodal.shifted(dx, dy, wrap),
            )
        )
    return kept


def _moved(
    shape: tuple[float, float, float, float, float] | None, dx: int, dy: int, wrap: bool, width: int
) -> tuple[float, float, float, float, float] | None:
    if shape is None:
        return None
    cx, cy, a, b, deg = shape
    return ((cx + dx) % width if wrap else cx + dx, cy + dy, a, b, deg)
