"""Inspect one image file: verify that it decodes completely and read what the manifest records.

Every reason an image can be refused has a name (`BadImage.reason`), so collect can quarantine
it with that reason instead of failing or dropping it. The orientation and the upright size
come from the runtime's image reader (`serving.runtime.imagefile`), the one owner of what
"upright" means, and a file is taken in only when that reader decodes it: every later stage
reads it through `read_upright`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.errors import AnonlabError
from serving.runtime.errors import ImageError

# The formats the platform takes in are the ones the runtime writes back; the runtime also owns
# JPEG decoding.
from serving.runtime.imagefile import (
    FORMAT_EXTENSIONS,
    decode_jpeg,
    read_header,
    read_image,
    read_orientation,
    read_upright,
    upright_size,
)

STORE_EXTENSION = {fmt: exts[0] for fmt, exts in FORMAT_EXTENSIONS.items()}

_EXIF_DATETIME = 0x0132
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 0x9003
_GPS_IFD = 0x8825
_TIFF_BITS_PER_SAMPLE = 258

# Bits per channel for the Pillow modes whose depth the mode itself says.
_MODE_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8}
_MODE_BITS.update({"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32})


class BadImage(Exception):
    """An image that cannot be taken in; `reason` is a stable name, `detail` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What the manifest records of an image; sizes as in `data.manifest.ManifestRecord`."""

    format: str
    width: int  # upright: as a viewer shows it
    height: int
    bit_depth: int
    channels: int
    orientation: int  # EXIF orientation, 1..8 (1: none)
    captured_at: str | None
    has_gps: bool
    stored_width: int  # the pixel rows and columns as stored, before the orientation
    stored_height: int


def read_upright_sized(
    path: Path, width: int, height: int, *, said: str, unreadable: str, other_size: str
) -> np.ndarray:
    """The image at `path` as a viewer shows it (`read_upright`: uint8 RGB), checked to be the
    `width` x `height` that `said` (what gave that size) gives it: at any other size its boxes
    and masks would be in another frame. AnonlabError naming `path` when it cannot be read
    (ending with `unreadable`, what to do) or is another size (ending with `other_size`)."""
    try:
        pixels = read_upright(path)
    except (OSError, ImageError) as e:
        raise AnonlabError(f"{path}: cannot be read ({e}){unreadable}") from None
    if pixels.shape[:2] != (height, width):
        raise AnonlabError(
            f"{path}: {pixels.shape[1]}x{pixels.shape[0]} upright, {said} {width}x{height}; "
            f"{other_size}"
        )
    return pixels


def inspect_image(data: bytes, name: str, max_pixels: int) -> ImageInfo:
    """Verify that `data` (the file called `name`) is a whole, supported image; describe it.

    Raises BadImage with reason `empty`, `undecodable`, `unsupported_format`, `wrong_extension`,
    `too_many_pixels` (a decompression bomb: checked from the header, before decoding) or
    `truncated`.
    """
    if not data:
        raise BadImage("empty", "the file has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImage("too_many_pixels", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
        raise BadImage(reason, f"not a readable image ({e})") from None

    fmt = img.format or "unknown"
    if fmt == "MPO":  # multi-picture JPEG from some cameras: the first frame is a plain JPEG
        fmt = "JPEG"
    if fmt not in FORMAT_EXTENSIONS:
        raise BadImage("unsupported_format", f"{fmt} images are not supported")
    ext = PurePosixPath(name).suffix.lower()
    if ext not in FORMAT_EXTENSIONS[fmt]:
        raise BadImage("wrong_extension", f"the content is {fmt} but the name ends in '{ext}'")

    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(
            "too_many_pixels",
            f"{width}x{height} = {width * height} pixels exceeds collect.max_pixels={max_pixels}",
        )
    bit_depth = _bit_depth(img, data)
    channels = len(img.getbands())
    captured_at, has_gps = _exif(img)

    # The stored size and the orientation as the runtime's reader has them (Pillow gives some
    # TIFFs' size already turned).
    try:
        if fmt == "JPEG":
            # The runtime's strict decode: Pillow pads a scan cut short with grey (a truncated
            # file with an end marker appended passes its load). At 1/8 scale it still reads
            # every entropy-coded byte. The frame (CMYK, 12-bit and lossless JPEG are refused)
            # and the orientation come from the header.
            header = read_header(data)
            decode_jpeg(data, scale=8)
            width, height = header.width, header.height
            orientation = read_orientation(data)
        else:
            image = read_image(data, max_pixels=max_pixels)
            width, height, orientation = image.width, image.height, image.orientation
    except ImageError as e:
        message = str(e).lower()
        reason = "truncated" if "truncated" in message else "undecodable"
        if "not supported" in message:  # a mode, depth or animation the reader refuses
            reason = "unsupported_format"
        raise BadImage(reason, str(e)) from None
    upright_width, upright_height = upright_size(width, height, orientation)
    return ImageInfo(
        format=fmt,
        width=upright_width,
        height=upright_height,
        bit_depth=bit_depth,
        channels=channels,
        orientation=orientation,
        captured_at=captured_at,
        has_gps=has_gps,
        stored_width=width,
        stored_height=height,
    )


def _bit_depth(img: Image.Image, data: bytes) -> int:
    if img.format == "PNG" and data[12:16] == b"IHDR":
        # Pillow reads 16-bit colour PNGs as 8-bit RGB; the header keeps the file's depth.
        return int(data[24])
    if img.format == "TIFF":
        bits = img.tag_v2.get(_TIFF_BITS_PER_SAMPLE)
        if bits:
            return int(bits[0] if isinstance(bits, tuple) else bits)
    return _MODE_BITS.get(img.mode, 8)


def _exif(img: Image.Image) -> tuple[str | None, bool]:
    """(capture time, whether GPS tags are present) from the EXIF block."""
    try:
        exif = img.getexif()
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return None, False
    raw_time = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
    return _exif_time(raw_time), bool(exif.get_ifd(_GPS_IFD))


def _exif_time(value: object) -> str | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' as ISO 8601 (camera local time, no zone); None if malformed."""
    if not isinstance(value, str) or len(value) < 19:
        return None
    date, _, time = value.strip("\x00 ").partition(" ")
    parts = date.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or len(time) < 8:
        return None
    return f"{parts[0]}-{parts[1]}-{parts[2]}T{time[:8]}"
