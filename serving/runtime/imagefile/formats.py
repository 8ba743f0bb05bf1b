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


# Signatures of picture formats this runtime does not read (each named in errors). A file with
# one holds a picture that cannot be anonymized, which is not the same as not being an image.
_OTHER_PICTURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "Photoshop"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"II\xbc", "JPEG XR"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif",
                b"avis"}  # fmt: skip


def identify(head: bytes) -> str | None:
    """The picture format whose signature `head` (a file's first 16 bytes, or more) starts
    with: "JPEG", "PNG", "TIFF" or "WEBP" (read here), the name of another picture format
    ("GIF", "BMP", "HEIF/AVIF", ...), or None when it is none of them."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF"
    return next((name for magic, name in _OTHER_PICTURES if head.startswith(magic)), None)


def sniff(data: bytes) -> str:
    """The format of an image file this runtime reads ("JPEG", "PNG", "TIFF", "WEBP"); an
    ImageError that names the format, or says it is none, otherwise."""
    kind = identify(data[:16])
    if kind in FORMAT_EXTENSIONS:
        return kind
    if kind is not None:
        raise ImageError(f"{kind} images are not supported: convert to JPEG or PNG")
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
            f"{max_pixels} (max_pixels; --max-pixels of blur and serve): downscale it or raise "
            "the limit"
        )


def mode_of(pixels: np.ndarray) -> str:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
