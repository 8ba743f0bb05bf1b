"""The image formats the runtime reads and writes, and what a read file is: `ImageFile` (pixels
plus what writing them back needs) and `ImageHeader` (format and size from the header alone)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.runtime.errors import ImageError

# The formats read and written here (collect takes in the same), and the file extensions that
# announce each of them.
# Default decompression-bomb guard: a 16K x 8K panorama (134 Mpx) passes.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}
IMAGE_EXTENSIONS = frozenset(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)
DEFAULT_MAX_PIXELS = 150_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, eq=False)
class ImageFile:
    """An image file's pixels in stored orientation and what writing it back needs.

    pixels: (H, W) grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or
    uint16 for 16-bit PNG/TIFF. format: "JPEG", "PNG", "TIFF" or "WEBP". orientation: the EXIF
    orientation, 1..8 (1 when absent or invalid). exif: the EXIF block as TIFF-structured bytes
    (no "Exif" prefix) rebuilt from its allowed tags, GPS included (`metadata.rebuild_exif`).
    xmp, icc_profile: as in the file (XMP without embedded images or binary values). jpeg_*:
    quality estimate, chroma subsampling ("4:2:0", ...; None when unusual), and the
    quantization tables per colour component in natural order (an unusual subsampling, None, is
    written as 4:2:0). dropped: what of the file will not be written back, and why (for the
    caller's report).
    """

    pixels: np.ndarray
    format: str
    mode: str
    bit_depth: int
    orientation: int = 1
    exif: bytes | None = None
    xmp: bytes | None = None
    icc_profile: bytes | None = None
    jpeg_quality: int | None = None
    jpeg_subsampling: str | None = None
    jpeg_qtables: tuple[tuple[int, ...], ...] | None = None
    progressive: bool = False
    lossless: bool | None = None
    compression: str | None = None
    dropped: tuple[str, ...] = ()
    # JPEG: whole APPn/COM segments; PNG: whole ancillary chunks; written back as they are.
    blocks: tuple[bytes, ...] = ()
    # PNG: (bit depth, colour type) of the original, which decides whether sBIT/bKGD/tRNS fit.
    png_format: tuple[int, int] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding a pixel."""

    format: str  # "JPEG", "PNG", "TIFF" or "WEBP"
    width: int
    height: int


def sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    known = {
        b"GIF8": "GIF",
        b"BM": "BMP",
        b"%PDF": "PDF",
        b"\x00\x00\x00\x0cjP": "JPEG 2000",
        b"\xff\x0a": "JPEG XL",
        b"II\xbc": "JPEG XR",
    }
    for magic, name in known.items():
        if data.startswith(magic):
            raise ImageError(f"{name} images are not supported: convert to JPEG or PNG")
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace")
        raise ImageError(f"HEIF/AVIF images ({brand!r}) are not supported: convert to JPEG")
    if data.startswith(b"II+\x00") or data.startswith(b"MM\x00+"):
        raise ImageError("BigTIFF images are not supported: convert to TIFF, PNG or JPEG")
    raise ImageError(
        f"the data is not a JPEG, PNG, TIFF or WebP image (it starts with {data[:8]!r}): "
        "check that the file was sent whole and in one of those formats"
    )


def check_size(width: int, height: int, max_pixels: int | None, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"the {fmt} header gives an empty size {width}x{height}: re-export it")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (max_pixels): downscale it or raise the limit"
        )


def mode_of(pixels: np.ndarray) -> str:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
