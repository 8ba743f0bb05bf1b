"""Hide detected objects in an image, each class in its `Style`: which region (ellipse, mask or
box, grown by a margin) and how (blur, pixelate or fill).

Regions and strengths (all sizes in pixels of the image the detections are in):
- margin: a fraction of the object's box size added on every side (horizontally `margin` x box
  width, vertically `margin` x box height), at least MIN_MARGIN_PX = 2 px: at a few pixels per
  object a box is often a pixel short. A mask is dilated all round by at least `margin` x the
  box's longer side (at least MIN_MARGIN_PX; large radii on blocks, up to 20% more). A
  detection with no mask, or an empty one, is hidden by its box instead.
- ellipse: the ellipse through the corners of the box + margin (the one with the same aspect,
  scaled by sqrt 2), so the whole box + margin is fully hidden; a pixel any part of which lies in
  that ellipse is fully hidden. `feather` adds a soft edge outside it, `feather` x the ellipse's
  semi-axes wide, where the hidden picture fades into the original: the ramp never reaches
  inside, so no part of the object + margin shows through. No minimum width: on a tiny face
  the soft edge is under a pixel, which is fine.
- strengths scale with the hidden region's shorter side S (object + margin), so a 12-px face
  (S = 16 with the 2-px margin) is hidden as thoroughly as a 600-px one. blur: Gaussian,
  sigma = BLUR_SIGMA_FRACTION x S = 0.2 S, at least BLUR_MIN_SIGMA_PX; detail with a period
  under S / 4 (eyes, mouth, a plate's characters) keeps under 1e-5 of its contrast, far below
  one grey level, and from sigma 4 px up the blur runs on a copy shrunk k = sigma // 2 times
  (block means), which drops detail finer than k px outright, so no deconvolution brings it
  back. pixelate: square blocks of ceil(S / PIXELATE_BLOCKS) px, at least 2, so at most 5
  blocks across the region's shorter side (a face is about 4 wide). fill: the region's mean
  colour.
- Overlapping detections are applied in order, each on the result of the ones before, so every
  region ends hidden (a later soft edge mixes in the current pixels, which inside an earlier
  region are already hidden).
- Only a crop around each region is read and written; pixels outside every region are left
  bit for bit as they were. With `panorama=True` the left and right edges meet: a region past
  either edge (a box with x1 > width, or a margin past x = 0) continues on the other side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from serving.runtime.detections import SNAP, Detections, mask_window
from serving.runtime.errors import ImageError

SHAPES = ("ellipse", "mask", "box")
METHODS = ("blur", "pixelate", "fill")
MIN_MARGIN_PX = 2.0
BLUR_SIGMA_FRACTION = 0.2
BLUR_MIN_SIGMA_PX = 2.0
PIXELATE_BLOCKS = 5
PIXELATE_MIN_BLOCK_PX = 2
# Above this sigma the blur runs on a shrunk copy (cost independent of the object's size).
_DIRECT_BLUR_MAX_SIGMA = 3.0
_SHRUNK_SIGMA = 2.0


@dataclass(frozen=True)
class Style:
    """How one class is hidden (module docstring). Stored as a dict in an artifact's manifest.

    shape: "ellipse" (faces), "mask" (persons, vehicles; the box without a mask) or "box".
    method: "blur", "pixelate" or "fill". margin: fraction of the box size added on every side
    (at least MIN_MARGIN_PX). feather: ellipses only, width of the soft edge outside the fully
    hidden ellipse as a fraction of its semi-axes.
    """

    shape: str
    method: str = "blur"
    margin: float = 0.0
    feather: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"style shape {self.shape!r} is not one of: {', '.join(SHAPES)}")
        if self.method not in METHODS:
            raise ValueError(f"style method {self.method!r} is not one of: {', '.join(METHODS)}")
        for name, top in (("margin", 2.0), ("feather", 2.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"style {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and 0 <= value <= top):
                raise ValueError(f"style {name} must be between 0 and {top}, got {value}")
            object.__setattr__(self, name, float(value))
        if self.feather and self.shape != "ellipse":
            raise ValueError(
                f"style feather applies to shape 'ellipse' only, got feather={self.feather} "
                f"with shape {self.shape!r}: set feather to 0"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Style:
        """The style a `to_dict` gave; unknown or missing keys and bad values raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a style must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(
                f"style key(s) {', '.join(map(repr, unknown))} not allowed; the keys are: "
                f"{', '.join(allowed)}"
            )
        if "shape" not in data:
            raise ValueError(f"a style needs a shape, one of: {', '.join(SHAPES)}")
        return cls(**data)  # type: ignore[arg-type]


DEFAULT_STYLES: dict[str, Style] = {
    "face": Style("ellipse", "blur", margin=0.1, feather=0.15),
    "person": Style("mask", "blur", margin=0.04),
    "license_plate": Style("box", "blur", margin=0.1),
    "vehicle": Style("mask", "blur", margin=0.04),
}


@dataclass(frozen=True, eq=False)
class Region:
    """Where one detection is hidden: rows y0..y1-1 and columns x0..x1-1, where columns at or
    past `width` wrap to the left edge (panoramas; then x1 - x0 <= width), and `alpha` (float32,
    (y1 - y0, x1 - x0)): 1 fully hidden, 0 untouched, between: the feathered edge. `size`: the
    shorter side of the object + margin, which sets the strength."""

    y0: int
    y1: int
    x0: int
    x1: int
    width: int
    alpha: np.ndarray
    size: float

    @property
    def columns(self) -> np.ndarray | slice:
        if self.x1 <= self.width:
            return slice(self.x0, self.x1)
        return np.arange(self.x0, self.x1) % self.width

    @property
    def covered(self) -> np.ndarray:
        """Which pixels of the window change (alpha > 0)."""
        return self.alpha > 0


def region(
    dets: Detections, i: int, style: Style, width: int, height: int, *, panorama: bool = False
) -> Region | None:
    """Where detection i is hidden in a width x height image; None when nothing of it is in the
    image."""
    box = dets.boxes[i].astype(np.float64)
    x0, y0, x1, y1 = box.tolist()
    w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
    mx = max(style.margin * w, MIN_MARGIN_PX)
    my = max(style.margin * h, MIN_MARGIN_PX)
    grown = (x0 - mx, y0 - my, x1 + mx, y1 + my)
    size = min(grown[2] - grown[0], grown[3] - grown[1])
    mask = None
    if style.shape == "mask" and dets.masks is not None and dets.masks[i].any():
        mask = dets.masks[i]
    if mask is not None:
        window, alpha = _dilated(
            mask, mask_window(box), max(style.margin * max(w, h), MIN_MARGIN_PX)
        )
    elif style.shape == "ellipse":
        window, alpha = _ellipse(grown, style.feather)
    else:
        window = mask_window(grown)
        alpha = np.ones((window[3] - window[1], window[2] - window[0]), np.float32)
    return _placed(window, alpha, width, height, panorama, size)


def _dilated(
    mask: np.ndarray, window: tuple[int, int, int, int], radius: float
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The mask grown by at least `radius` px, all round.

    Large radii are grown on blocks of d = radius // 16 px (a block is set when any of its
    pixels is), with the radius widened by the block diagonal, so the result still holds every
    pixel within `radius` of the mask and adds at most ~3 d = 0.2 radius more; distances are
    OpenCV's 5x5 chamfer (within 2% of Euclidean). Cost: the window's pixels / d^2.
    """
    d = max(int(radius // 16), 1)
    h, w = mask.shape
    ny, nx = -(-h // d), -(-w // d)
    if d > 1:
        whole = np.zeros((ny * d, nx * d), np.float32)
        whole[:h, :w] = mask
        blocks = cv2.resize(whole, (nx, ny), interpolation=cv2.INTER_AREA) > 0
    else:
        blocks = mask
    reach = radius / d + (math.sqrt(2) if d > 1 else 0.0)
    pad = math.ceil(reach) + 1
    padded = np.ones((ny + 2 * pad, nx + 2 * pad), np.uint8)
    padded[pad : pad + ny, pad : pad + nx] = ~blocks
    # Distance of each block to the nearest mask block (the zeros).
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)
    alpha = (distance <= reach * 1.02).astype(np.float32)
    if d > 1:
        alpha = np.repeat(np.repeat(alpha, d, axis=0), d, axis=1)
    ix0, iy0 = window[0] - pad * d, window[1] - pad * d
    ix1, iy1 = ix0 + alpha.shape[1], iy0 + alpha.shape[0]
    return (ix0, iy0, ix1, iy1), alpha


def _ellipse(
    grown: tuple[float, float, float, float], feather: float
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The ellipse through the corners of `grown`, fully hidden, and its feathered edge."""
    cx, cy = (grown[0] + grown[2]) / 2, (grown[1] + grown[3]) / 2
    ax = max((grown[2] - grown[0]) / 2, SNAP) * math.sqrt(2)
    ay = max((grown[3] - grown[1]) / 2, SNAP) * math.sqrt(2)
    outer = 1.0 + feather
    window = mask_window((cx - ax * outer, cy - ay * outer, cx + ax * outer, cy + ay * outer))
    xs = np.arange(window[0], window[2]) + 0.5
    ys = np.arange(window[1], window[3]) + 0.5
    # The point of each pixel nearest the centre: a pixel any part of which is inside counts.
    dx = np.maximum(np.abs(xs - cx) - 0.5, 0) / ax
    dy = np.maximum(np.abs(ys - cy) - 0.5, 0) / ay
    rho = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    alpha = np.clip((outer - rho) / feather, 0, 1) if feather > 0 else np.zeros_like(rho)
    alpha[rho <= 1] = 1.0
    return window, alpha.astype(np.float32)


def _placed(
    window: tuple[int, int, int, int],
    alpha: np.ndarray,
    width: int,
    height: int,
    panorama: bool,
    size: float,
) -> Region | None:
    """The window and its alpha cut to the image's rows, and to its columns or, in a panorama,
    moved by whole turns to start in [0, width) and folded onto one turn at most."""
    x0, y0, x1, y1 = window
    r0, r1 = max(y0, 0), min(y1, height)
    alpha = alpha[r0 - y0 : r1 - y0]
    if panorama:
        turns = math.floor(x0 / width)
        x0, x1 = x0 - turns * width, x1 - turns * width
        if x1 - x0 > width:
            folded = alpha[:, :width].copy()
            for start in range(width, x1 - x0, width):
                piece = alpha[:, start : start + width]
                np.maximum(folded[:, : piece.shape[1]], piece, out=folded[:, : piece.shape[1]])
            alpha, x1 = folded, x0 + width
    else:
        c0, c1 = max(x0, 0), min(x1, width)
        alpha = alpha[:, c0 - x0 : c1 - x0]
        x0, x1 = c0, c1
    if r0 >= r1 or x0 >= x1 or not alpha.any():
        return None
    return Region(r0, r1, x0, x1, width, np.ascontiguousarray(alpha), size)


def anonymize(
    image: np.ndarray,
    dets: Detections,
    classes: Sequence[str],
    styles: Mapping[str, Style],
    *,
    panorama: bool = False,
    inplace: bool = False,
) -> np.ndarray:
    """`image` with every detection hidden in its class's style (module docstring).

    image: (H, W) or (H, W, C) uint8 or uint16, in the detections' coordinates. classes: label
    i + 1 is classes[i]. A label with no class or a class with no style raises ValueError before
    anything is changed. Returns a copy, or `image` itself changed with `inplace=True` (saves a
    full-image copy).
    """
    _check_image(image)
    per_detection = _styles_of(dets, classes, styles)
    out = image if inplace else image.copy()
    view = out if out.ndim == 3 else out[:, :, None]
    height, width = out.shape[:2]
    for i, style in enumerate(per_detection):
        found = region(dets, i, style, width, height, panorama=panorama)
        if found is not None:
            _hide(view, found, style.method, panorama)
    return out


def hidden_mask(
    width: int,
    height: int,
    dets: Detections,
    classes: Sequence[str],
    styles: Mapping[str, Style],
    *,
    panorama: bool = False,
    full: bool = False,
) -> np.ndarray:
    """(height, width) bool: the pixels `anonymize` may change (alpha > 0); it leaves all
    others as they are. The union of the detections' regions, e.g. for a mask output. With
    `full`, only the pixels it hides fully (alpha 1: not the soft edge of an ellipse), which is
    what evaluate counts as covered."""
    out = np.zeros((height, width), bool)
    for i, style in enumerate(_styles_of(dets, classes, styles)):
        found = region(dets, i, style, width, height, panorama=panorama)
        if found is not None:
            shown = found.alpha >= 1 if full else found.covered
            out[found.y0 : found.y1, found.columns] |= shown
    return out


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"the image to anonymize must be a uint8 or uint16 array, got "
            f"{getattr(image, 'dtype', type(image).__name__)}: decode it with read_image"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[2] <= 4):
        raise ImageError(
            f"the image to anonymize must be (H, W) or (H, W, 1..4 channels), got shape "
            f"{image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"the image to anonymize is empty: shape {image.shape}")


def _styles_of(
    dets: Detections, classes: Sequence[str], styles: Mapping[str, Style]
) -> list[Style]:
    out = []
    for label in dets.labels.tolist():
        if not 1 <= label <= len(classes):
            raise ValueError(f"detection label {label} has no class (classes: {list(classes)})")
        name = classes[label - 1]
        if name not in styles:
            raise ValueError(
                f"no anonymization style for class {name!r} (styles exist for: "
                f"{', '.join(sorted(styles)) or 'none'}): add one to the artifact's styles"
            )
        out.append(styles[name])
    return out


def _hide(image: np.ndarray, region: Region, method: str, panorama: bool) -> None:
    """Hide one region of `image` ((H, W, C)) in place."""
    columns = region.columns
    # A view for a region inside the image, a copy (written back below) for one across the seam.
    window = image[region.y0 : region.y1, columns]
    if isinstance(columns, np.ndarray):
        window = np.ascontiguousarray(window)
    if method == "blur":
        hidden = _blurred(image, region, panorama)
    elif method == "pixelate":
        hidden = _pixelate(window, _block(region.size))
    else:
        hidden = _fill(window, region.covered)
    alpha = region.alpha
    part = (alpha > 0) & (alpha < 1)
    if part.any():  # the feathered edge: computed before the window changes
        a = alpha[part][:, None]
        mixed = window[part].astype(np.float32) * (1 - a) + hidden[part].astype(np.float32) * a
        hidden = hidden.copy()
        hidden[part] = np.rint(mixed).astype(image.dtype)
    # cv2.copyTo: boolean-mask assignment in numpy is ~50x slower on large regions.
    written = cv2.copyTo(np.ascontiguousarray(hidden), (alpha > 0).view(np.uint8), window)
    if written is not window or isinstance(columns, np.ndarray):
        image[region.y0 : region.y1, columns] = written.reshape(window.shape)


def _blurred(image: np.ndarray, region: Region, panorama: bool) -> np.ndarray:
    """The region's window blurred, from a crop with about sigma px of context around it (so
    the blur does not smear the crop's edge into the region)."""
    height, width = image.shape[:2]
    sigma = _sigma(region.size)
    shrink = _shrink(sigma)
    pad = math.ceil(sigma)
    r0, r1 = max(region.y0 - pad, 0), min(region.y1 + pad, height)
    if panorama:  # context across the seam, never more than one turn in all
        pad = max(min(pad, (width - (region.x1 - region.x0)) // 2), 0)
        c0, c1 = region.x0 - pad, region.x1 + pad
    else:
        c0, c1 = max(region.x0 - pad, 0), min(region.x1 + pad, width)
    # Whole multiples of the shrink factor take OpenCV's fast path for INTER_AREA.
    r0, r1 = _trimmed(r0, r1, region.y0, region.y1, shrink)
    c0, c1 = _trimmed(c0, c1, region.x0, region.x1, shrink)
    columns = slice(c0, c1) if c0 >= 0 and c1 <= width else np.arange(c0, c1) % width
    blurred = _blur(image[r0:r1, columns], sigma)
    wy, wx = region.y0 - r0, region.x0 - c0
    wh, ww = region.alpha.shape
    return blurred[wy : wy + wh, wx : wx + ww]


def _trimmed(lo: int, hi: int, inner_lo: int, inner_hi: int, k: int) -> tuple[int, int]:
    """[lo, hi) cut to a multiple of k long where the context outside [inner_lo, inner_hi)
    allows."""
    excess = (hi - lo) % k
    cut = min(excess, hi - inner_hi)
    hi, excess = hi - cut, excess - cut
    return lo + min(excess, inner_lo - lo), hi


def _sigma(size: float) -> float:
    return max(BLUR_SIGMA_FRACTION * size, BLUR_MIN_SIGMA_PX)


def _block(size: float) -> int:
    return max(math.ceil(size / PIXELATE_BLOCKS), PIXELATE_MIN_BLOCK_PX)


def _shrink(sigma: float) -> int:
    return max(int(sigma // _SHRUNK_SIGMA), 1) if sigma > _DIRECT_BLUR_MAX_SIGMA else 1


def _blur(crop: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (h, w, C) pixels. A strong one runs on a copy shrunk k = sigma // 2
    times (block means), blurred there by sigma / k (2..4 px) and enlarged back: the cost does
    not grow with sigma, and detail finer than k px is dropped, not just damped."""
    h, w, channels = crop.shape
    k = _shrink(sigma)
    if k == 1:
        out = cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    else:
        small_w, small_h = max(-(-w // k), 1), max(-(-h // k), 1)
        small = cv2.resize(crop, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / k, borderType=cv2.BORDER_REPLICATE)
        out = cv2.resize(small.reshape(small_h, small_w, channels), (w, h), cv2.INTER_LINEAR)
    return out.reshape(h, w, channels)


def _pixelate(window: np.ndarray, block: int) -> np.ndarray:
    """Each block x block square (from the window's top-left) replaced by its mean."""
    h, w, channels = window.shape
    nx, ny = -(-w // block), -(-h // block)
    padded = np.pad(window, ((0, ny * block - h), (0, nx * block - w), (0, 0)), mode="edge")
    means = padded.reshape(ny, block, nx, block, channels).mean(axis=(1, 3))
    means = np.rint(means).astype(window.dtype)
    return np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:h, :w]


def _fill(window: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The window filled with the mean colour of the pixels `where` hides."""
    mean = (
        window[where].mean(axis=0) if where.any() else window.reshape(-1, window.shape[2]).mean(0)
    )
    return np.broadcast_to(np.rint(mean).astype(window.dtype), window.shape)
