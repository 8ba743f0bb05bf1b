"""Read an image file into pixels plus what is needed to write it back, and write anonymized
pixels as the same kind of file: same format, mode, bit depth, orientation, JPEG quantization
and chroma subsampling, with the file's EXIF (GPS included), XMP and ICC profile.

The modules: `formats` (the formats, `ImageFile`, `ImageHeader`), `jpeg`, `png`, `tiff_webp`
(each format's reading and writing), `view` (upright and detector views), `metadata` (what
metadata is kept: the allowlist), `embedded` (finding pictures inside bytes) and `check` (the
check of an encoded file before it is handed out).

Decisions:
- Pixels stay in stored orientation (`ImageFile.pixels`), so the written file keeps the same
  EXIF orientation tag and pixel layout. `upright` gives the view a viewer shows (what the
  detector must see: faces upright) and `from_upright` maps it back; both are exact pixel
  permutations, so anonymizing the upright view and mapping back changes nothing else.
- "The upright image" has one owner, here: `read_upright` decodes a file as a viewer shows it
  (uint8 RGB, `upright` then `detector_rgb`, as the runtime's pipeline sees it),
  `upright_size` gives the size a viewer shows, and `read_orientation` the orientation that
  `read_image` reports (from a JPEG's header alone). The platform's stages read images through
  them, so every coordinate they record is in the frame the runtime detects in.
- JPEG is decoded with simplejpeg and encoded with OpenCV: libjpeg-turbo straight into and
  out of numpy (OpenCV's decode + encode of an 8000x4000 JPEG is 1.5x faster than Pillow's,
  0.45 s against 0.68 s on one core, as Pillow copies through its own 4-byte pixel layout;
  simplejpeg decodes as fast as OpenCV and, unlike it, reports damage). The header is parsed
  here. The
  encoder gets the file's own quantization tables: IJG-scaled ones (libjpeg, libjpeg-turbo,
  Pillow, OpenCV, GIMP, ImageMagick and many cameras), with one quality for luma and chroma,
  are re-made exactly by OpenCV from that quality; others (some cameras) go to Pillow as they
  are. `estimate_jpeg_quality` is exact (+-0) for IJG-scaled tables and the nearest IJG quality
  (in log quantizer size) for others, typically within a few points; it is informational,
  since the tables themselves are kept.
- PNG is decoded and encoded with OpenCV too (it keeps 16 bits per channel, which Pillow cuts
  to 8 for colour). The written PNG is the encoder's IHDR and IDAT with the original's
  metadata chunks put back; JPEG output gets the original's metadata segments the same way.
  TIFF (Pillow; 16-bit colour through OpenCV) and WebP (Pillow) are kept as far as those
  libraries can write them; what they cannot is listed in `ImageFile.dropped`.
- Nothing that can hold a copy of the picture survives, since it would not be anonymized:
  metadata is kept by allowlist (`metadata`: EXIF rebuilt from the tags known to hold no
  picture, XMP without image properties or binary values, standard PNG text and JPEG comments
  screened for pictures, ICC profiles), and multi-picture frames, extended XMP, JFIF
  thumbnails, Photoshop/IPTC blocks, vendor segments and unknown PNG chunks are left out. Each
  removal is named in `ImageFile.dropped`, so nothing is lost silently. (`check` then
  checks the written file itself.)
- JPEG is decoded strictly (`decode_jpeg`): a file cut short, even with an end marker put back,
  is refused instead of being decoded with its missing rows grey.
- Mode: grey, grey+alpha, RGB and RGBA are kept (palette and 1-bit images come as RGB(A) and
  8-bit grey, 16-bit grey+alpha PNG as 16-bit RGBA); CMYK, float and 12-bit JPEG are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.runtime.errors import ImageError
from serving.runtime.imagefile.formats import (
    DEFAULT_MAX_PIXELS,
    FORMAT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageFile,
    ImageHeader,
    identify,
    sniff,
)
from serving.runtime.imagefile.jpeg import (
    decode_jpeg,
    estimate_jpeg_quality,
    jpeg_frame,
    jpeg_header,
    jpeg_orientation,
    read_jpeg,
    write_jpeg,
)
from serving.runtime.imagefile.png import png_chunks, png_header, read_png, write_png
from serving.runtime.imagefile.tiff_webp import (
    pil_size,
    read_tiff,
    read_webp,
    write_tiff,
    write_webp,
)
from serving.runtime.imagefile.view import detector_rgb, from_upright, upright, upright_size

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "ImageHeader",
    "decode_jpeg",
    "detector_rgb",
    "estimate_jpeg_quality",
    "from_upright",
    "identify",
    "png_chunks",
    "read_header",
    "read_image",
    "read_orientation",
    "read_upright",
    "upright",
    "upright_size",
    "write_image",
]

# An empty file (a copy that never started) and an empty request body, in their readers' words.
EMPTY = "the image file is empty (0 bytes)"
EMPTY_UPLOAD = "the image is empty (0 bytes): send the file's content"


def read_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Decode an image file (JPEG, PNG, TIFF or WebP) and keep what writing it back needs.

    Raises ImageError for empty, unrecognised, unsupported, undecodable or truncated data, and
    for images over `max_pixels` (checked from the header, before decoding; None: no limit).
    """
    data = bytes(data)
    if not data:
        raise ImageError(EMPTY, upload=EMPTY_UPLOAD)
    kind = sniff(data)
    reader = {"JPEG": read_jpeg, "PNG": read_png, "TIFF": read_tiff, "WEBP": read_webp}
    return reader[kind](data, max_pixels)


def read_header(data: bytes) -> ImageHeader:
    """The format and stored size of an image file from its header alone (cheap even for a
    huge or hostile file); ImageError when it is not a supported image or the header is damaged.
    `read_image` checks the same header again, so a file that passes here may still fail there."""
    if not data:
        raise ImageError(EMPTY, upload=EMPTY_UPLOAD)
    kind = sniff(data)
    if kind == "JPEG":
        _, width, height, _ = jpeg_frame(jpeg_header(data)[0])
    elif kind == "PNG":
        width, height = png_header(data)[:2]
    else:
        width, height = pil_size(data, kind)
    return ImageHeader(kind, int(width), int(height))


def read_upright(
    source: bytes | str | os.PathLike[str], *, max_pixels: int | None = None
) -> np.ndarray:
    """An image file (its bytes, or a path) as a viewer shows it: uint8 RGB (H, W, 3) with
    the EXIF orientation applied, grey repeated, alpha left out and 16 bits cut to their top 8;
    the same pixels the runtime's detector sees. ImageError as `read_image` (`max_pixels` as
    there; None, the default, is no limit: the platform's images were bounded when collected),
    OSError when a path cannot be read."""
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    image = read_image(data, max_pixels=max_pixels)
    return detector_rgb(upright(image.pixels, image.orientation))


def read_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) that `read_image` reports and `read_upright` applies; 1
    when the file has none. A JPEG's comes from its header, no pixel decoded; other formats are
    decoded, since their readers settle it with the pixels (TIFF through Pillow)."""
    if sniff(data) == "JPEG":
        return jpeg_orientation(jpeg_header(data)[0])
    return read_image(data, max_pixels=None).orientation


def write_image(file: ImageFile, pixels: np.ndarray) -> bytes:
    """`pixels` (stored orientation, the shape and dtype of `file.pixels`) encoded as `file`
    was: same format, mode, depth, JPEG quantization and subsampling, metadata kept."""
    if pixels.shape != file.pixels.shape or pixels.dtype != file.pixels.dtype:
        raise ValueError(
            f"pixels {pixels.shape} {pixels.dtype} do not match the file's "
            f"{file.pixels.shape} {file.pixels.dtype} (pass them in stored orientation)"
        )
    writer = {"JPEG": write_jpeg, "PNG": write_png, "TIFF": write_tiff, "WEBP": write_webp}
    return writer[file.format](file, np.ascontiguousarray(pixels))
