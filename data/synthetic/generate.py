"""The built-in `synthetic` image source's entry points: seeded street scenes with exact
ground truth.

`generate(cfg)` yields street-level frames and 2:1 equirectangular panoramas with faces,
persons, license plates and vehicles at every size, occluding one another, each with the exact
pixels it covers, so that every stage runs offline on known answers; `labelstudio_task` writes
that ground truth as a Label Studio export, as if annotators had labelled the image.

Image `i` depends on (`seed`, `i`) and the shares only, never on `count`: raising `count` only
appends images, and `generate_one(cfg, i)` makes image `i` alone. Consecutive indices form
capture sessions ("drives") of `frames_per_session` frames: one street, camera and day. Each
frame's `kind` says what review should make of it: `normal`; `empty` (no objects);
`near_duplicate` (the previous frame again, as a stopped vehicle takes it: shifted a pixel or
two, a touch darker and softer so that review keeps the original); `dark`; `blurry`.
"""

from __future__ import annotations

from collections.abc import Iterator

from data.config import SyntheticConfig
from data.synthetic.images import SyntheticImage
from data.synthetic.near_duplicate import near_duplicate
from data.synthetic.plan import make_plan
from data.synthetic.render import render_frame


def generate(cfg: SyntheticConfig) -> Iterator[SyntheticImage]:
    """Yield `cfg.count` images, one at a time."""
    previous: SyntheticImage | None = None
    for index in range(cfg.count):
        previous = _build(cfg, index, previous)
        yield previous


def generate_one(cfg: SyntheticConfig, index: int) -> SyntheticImage:
    """Image `index` alone: the same as the one `generate` yields at that position."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return _build(cfg, index, None)


def _build(cfg: SyntheticConfig, index: int, previous: SyntheticImage | None) -> SyntheticImage:
    plan = make_plan(cfg, index)
    if plan.kind != "near_duplicate":
        return render_frame(cfg, plan)
    if previous is None or previous.index != index - 1:
        previous = generate_one(cfg, index - 1)
    return near_duplicate(cfg, plan, previous)
