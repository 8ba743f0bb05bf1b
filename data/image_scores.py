"""Per-image review scores measured on a reduced-resolution decode, and the 64-bit perceptual hash.

Every score is measured on the *working image*: 8-bit luminance resized so that its long side is
`work_size` pixels. JPEGs are decoded straight at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling
(luma only), which is what makes review cheap; other formats are decoded fully, then reduced.
Review thresholds are therefore defined on the working image, not on the full resolution.
The working image and the thumbnail are turned upright after the reduced decode, with the
orientation and the mapping of the runtime's reader (`serving.runtime.imagefile`), which every
stage uses: the orientation as collect recorded it, else read from the file.
Pure functions on paths, bytes and arrays: no manifest, no configuration.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from serving.runtime.imagefile import read_orientation, upright
from serving.runtime.imagefile.metadata import ORIENTATION_TAG

# A path, the encoded bytes, or an open binary file.
ImageSource = str | os.PathLike[str] | bytes | BinaryIO

# A pixel at or above this 8-bit level counts as over-exposed (clipped highlights).
OVEREXPOSED_LEVEL = 250

THUMBNAIL_SIZE = 160


@dataclass(frozen=True)
class ImageScores:
    """What review measures on one image. All but the size come from the working image."""

    width: int  # full resolution, from the header
    height: int
    format: str  # Pillow's format name: JPEG, PNG, TIFF, WEBP
    mean: float  # mean luminance in [0, 1]
    overexposed: float  # share of pixels >= 250/255, in [0, 1]
    sharpness: float  # variance of the 3x3 Laplacian (8-bit levels squared)
    phash: int  # 64-bit DCT perceptual hash, see `phash`
    digest: str  # hash of the working image's pixels: exact-duplicate *candidates* only


@dataclass(frozen=True)
class WorkingImage:
    luma: np.ndarray  # uint8, H x W, long side == work_size, EXIF orientation applied
    width: int  # full resolution, from the header
    height: int
    format: str


def score_image(source: ImageSource, work_size: int, orientation: int | None = None) -> ImageScores:
    """Decode `source` at reduced resolution and measure it; raises on an unreadable image."""
    work = decode_working(source, work_size, orientation)
    mean, overexposed, sharpness = luma_scores(work.luma)
    return ImageScores(
        width=work.width,
        height=work.height,
        format=work.format,
        mean=mean,
        overexposed=overexposed,
        sharpness=sharpness,
        phash=phash(work.luma),
        digest=_array_digest(work.luma),
    )


def decode_working(
    source: ImageSource, work_size: int, orientation: int | None = None
) -> WorkingImage:
    """The working image of `source`: 8-bit luminance, long side `work_size`, upright.

    For a JPEG, Pillow's `draft` asks libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) whose
    output is still at least `work_size` on the long side, in luma only: the decoder then skips
    colour conversion, chroma upsampling and most of the inverse DCT. Other formats have no such
    shortcut and are decoded fully. `orientation` is the EXIF tag (1-8) as collect recorded it
    (None: read from the file); it is applied to the small image so hashes and thumbnails match
    what a viewer shows.
    """
    source, orientation = _oriented(source, orientation)
    with _open(source) as img:
        width, height = img.size
        fmt = img.format or ""
        if fmt == "JPEG" and max(width, height) > work_size:
            img.draft("L", draft_size(width, height, work_size))
        luma = to_luma8(img)
        turned = _turned_by_pillow(img)
    luma = resize_long_side(luma, work_size)
    return WorkingImage(luma if turned else upright(luma, orientation), width, height, fmt)


def draft_size(width: int, height: int, work_size: int) -> tuple[int, int]:
    """The size to request from JPEG DCT scaling so that the long side stays >= `work_size`."""
    scale = work_size / max(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def to_luma8(img: Image.Image) -> np.ndarray:
    """8-bit luminance (ITU-R 601 weights, as JPEG's Y) of any Pillow image, as a uint8 array.

    16-bit images are scaled down (65535 -> 255), never clipped: Pillow's own `convert("L")`
    clips 16-bit values at 255, which would make every 16-bit image look white. Pillow's 32-bit
    integer mode "I" is how it hands out 16-bit greyscale in some versions, so it is read on the
    16-bit scale too; float images ("F") are taken as [0, 1] when they fit, else as 8-bit levels.
    Alpha is ignored.
    """
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img).astype(np.float32)
        return _to_uint8(wide * (255.0 / 65535.0))
    if mode == "F":
        values = np.asarray(img).astype(np.float32)
        if values.size and float(np.nanmax(values)) <= 1.0:
            values = values * 255.0
        return _to_uint8(values)
    try:
        return np.asarray(img.convert("L"))
    except ValueError:  # modes without a direct conversion (e.g. LAB, HSV) go through RGB
        return np.asarray(img.convert("RGB").convert("L"))


def resize_long_side(luma: np.ndarray, work_size: int) -> np.ndarray:
    """`luma` resized so that its long side is exactly `work_size`.

    Shrinking by 2x or more averages areas (no aliasing); a smaller shrink, which is what is
    left after JPEG DCT scaling, is bilinear: DCT scaling has already low-passed the image, and
    a second area filter would blur it again (near blur thresholds, Laplacian variance 10-20 %
    below a full decode's, against 0-10 % this way), at several times the cost. Smaller images
    are enlarged, so that every score is measured at the same scale.
    """
    h, w = luma.shape[:2]
    long_side = max(h, w)
    if long_side == work_size:
        return luma
    scale = work_size / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if long_side >= 2 * work_size else cv2.INTER_LINEAR
    return cv2.resize(luma, size, interpolation=interpolation)


def luma_scores(luma: np.ndarray) -> tuple[float, float, float]:
    """(mean luminance in [0, 1], share of pixels >= 250/255, variance of the Laplacian).

    The Laplacian is OpenCV's 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]] on 8-bit levels; its
    variance depends on the scale it is measured at, so compare it only between images measured
    at the same working size. On a JPEG working image (DCT-scaled) it differs from the value on
    a full decode shrunk with an area filter, since the two low-pass filters differ: identical
    when the DCT scale lands on the working size (1920 px at work_size 240, 2048 at 256), else
    within about 25 % near usual blur thresholds and up to 40 % on detail-rich images. Mean and
    over-exposure agree within 0.01, the pHash within a few bits.
    """
    if luma.size == 0:
        return 0.0, 0.0, 0.0
    mean = cv2.mean(luma)[0] / 255.0
    overexposed = np.count_nonzero(luma >= OVEREXPOSED_LEVEL) / luma.size
    # 16-bit output is exact (|Laplacian| <= 4 * 255) and faster than float.
    _, std = cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_16S))
    return float(mean), float(overexposed), float(std[0, 0]) ** 2


def phash(luma: np.ndarray) -> int:
    """64-bit perceptual hash: DCT of a 32x32 reduction, low 8x8 frequencies above their median.

    The same construction as the `imagehash` package's `phash`. Chosen over dHash because it
    ignores small changes of brightness, contrast and compression that frames of the same scene
    show, while it still separates different scenes; at 32x32 it costs microseconds.
    """
    small = cv2.resize(luma, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    ordered = np.sort(low, axis=None)  # the median of 64 values; np.median costs 10x more
    bits = (low > (ordered[31] + ordered[32]) / 2).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def pixel_digest(source: ImageSource) -> str:
    """Hash of the fully decoded pixels (mode, size and values): equal for identical content.

    Encoding, compression level and metadata do not enter it, so a photo re-encoded losslessly
    or carrying other metadata has the same digest. It costs a full decode; review computes it
    only for images whose working images are already identical.
    """
    with _open(source) as img:
        img.load()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{img.mode} {img.size[0]}x{img.size[1]}\n".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def thumbnail_jpeg(
    source: ImageSource, size: int = THUMBNAIL_SIZE, orientation: int | None = None
) -> bytes:
    """A small upright colour JPEG of `source` (long side `size`) for the review report;
    `orientation` as for `decode_working`."""
    source, orientation = _oriented(source, orientation)
    with _open(source) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        if img.mode.startswith("I") or img.mode == "F":
            small = Image.fromarray(to_luma8(img))
        elif img.mode in ("RGB", "L"):
            small = img.copy()
        else:
            small = img.convert("RGB")
        turned = _turned_by_pillow(img)
    small.thumbnail((size, size))
    if not turned:
        small = Image.fromarray(upright(np.asarray(small), orientation))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    return Image.open(source)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _turned_by_pillow(img: Image.Image) -> bool:
    """Whether Pillow's load already turned `img` upright: its TIFF reader does so (and drops
    the tag; the runtime's TIFF reader turns such pixels back to stored orientation)."""
    return img.format == "TIFF" and ORIENTATION_TAG not in img.tag_v2


def _oriented(source: ImageSource, orientation: int | None) -> tuple[ImageSource, int]:
    """`source` and its orientation; when that is not given, the file is read once into bytes
    and its orientation taken as the runtime's reader finds it."""
    if orientation is not None:
        return source, orientation
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source.read()
    return data, read_orientation(data)


def _array_digest(luma: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{luma.shape[0]}x{luma.shape[1]}\n".encode())
    h.update(np.ascontiguousarray(luma).data)
    return h.hexdigest()
