"""Read an image file into pixels plus what is needed to write it back, and write anonymized
pixels as the same kind of file: same format, mode, bit depth, orientation, JPEG quantization
and chroma subsampling, with the file's EXIF (GPS included), XMP and ICC profile.

Decisions:
- Pixels stay in stored orientation (`ImageFile.pixels`), so the written file keeps the same
  EXIF orientation tag and pixel layout. `upright` gives the view a viewer shows (what the
  detector must see: faces upright) and `from_upright` maps it back; both are exact pixel
  permutations, so anonymizing the upright view and mapping back changes nothing else.
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
  removal is named in `ImageFile.dropped`, so nothing is lost silently. (`output_check` then
  checks the written file itself.)
- JPEG is decoded strictly (`decode_jpeg`): a file cut short, even with an end marker put back,
  is refused instead of being decoded with its missing rows grey.
- Mode: grey, grey+alpha, RGB and RGBA are kept (palette and 1-bit images come as RGB(A) and
  8-bit grey, 16-bit grey+alpha PNG as 16-bit RGBA); CMYK, float and 12-bit JPEG are refused.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image, TiffImagePlugin, WebPImagePlugin

from serving.runtime.errors import ImageError
from serving.runtime.metadata import (
    EXIF_IFD_TAG,
    GPS_IFD_TAG,
    MAX_INFLATED,
    ORIENTATION_TAG,
    clean_xmp,
    exif_orientation,
    inflate,
    rebuild_exif,
    screen_text,
)

log = logging.getLogger(__name__)

# Default decompression-bomb guard: a 16K x 8K panorama (134 Mpx) passes.
# The formats read and written here (collect takes in the same), and the file extensions that
# announce each of them.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}
IMAGE_EXTENSIONS = frozenset(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)
DEFAULT_MAX_PIXELS = 150_000_000
# zlib level for PNG output: near the best size at a fraction of level 9's time.
PNG_COMPRESSION = 4
# Lossy WebP does not record its quality; re-encoding uses this one.
WEBP_QUALITY = 90


# JPEG markers.
_SOI, _EOI, _SOS, _DQT, _COM = 0xD8, 0xD9, 0xDA, 0xDB, 0xFE
_SOF_SUPPORTED = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # baseline, extended, progressive (+ arithmetic)
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xCA, 0xC6, 0xCE}
_EXIF_ID = b"Exif\x00\x00"
_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXTENSION_ID = b"http://ns.adobe.com/xmp/extension/\x00"
_ICC_ID = b"ICC_PROFILE\x00"
# libjpeg's warning for junk between a complete scan and the end marker: the picture is whole.
_JUNK_BEFORE_END = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")

# Position in the natural (row-major) order of each coefficient of the zigzag order.
_ZIGZAG = np.array(
    [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
     20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
     59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63],
)  # fmt: skip
# The standard luminance and chrominance tables (ITU T.81 Annex K), natural order.
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
     56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104,
     113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
)  # fmt: skip
_STD_CHROMA = np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56]
                       + [99] * 5 + [47, 66] + [99] * 38)  # fmt: skip


def _ijg_tables(base: np.ndarray) -> np.ndarray:
    """(100, 64): the IJG scaling of `base` for qualities 1..100, as libjpeg's
    jpeg_set_quality makes them (baseline: clamped to 1..255)."""
    q = np.arange(1, 101)[:, None]
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((base[None, :] * scale + 50) // 100, 1, 255)


_IJG_LUMA, _IJG_CHROMA = _ijg_tables(_STD_LUMA), _ijg_tables(_STD_CHROMA)
_SUBSAMPLING = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (4, 1): "4:1:1", (1, 2): "4:4:0"}
_CV2_SAMPLING = {
    "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    "4:1:1": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411,
    "4:4:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
}
# Pillow's encoder knows three; the others fall back to the nearest coarser one it has.
_PIL_SAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, "4:1:1": 2, "4:4:0": 2}

# PNG chunks carried over. Those that describe the pixel format only while it is unchanged.
_PNG_KEEP = {b"cHRM", b"gAMA", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs", b"tIME"}
# Those chunks and sBIT/bKGD/tRNS are a few numbers each (a palette's tRNS, the longest, 256).
_PNG_FIXED_MAX = 256
# Text chunks kept: the keywords of the PNG standard (free text, screened for pictures).
_PNG_TEXT_KEYWORDS = {
    b"Title", b"Author", b"Description", b"Copyright", b"Creation Time", b"Software",
    b"Disclaimer", b"Warning", b"Source", b"Comment",
}  # fmt: skip
_PNG_SAME_FORMAT = {b"sBIT", b"bKGD", b"tRNS"}
_PNG_STRUCTURE = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_KEYWORD = b"XML:com.adobe.xmp"

# TIFF tags written back (descriptive ones; structure is the encoder's).
_TIFF_DESCRIPTIVE = (269, 270, 271, 272, 274, 282, 283, 285, 296, 305, 306, 315, 316, 33432)


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


# ---------------------------------------------------------------------------------------------
# Reading


def read_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Decode an image file (JPEG, PNG, TIFF or WebP) and keep what writing it back needs.

    Raises ImageError for empty, unrecognised, unsupported, undecodable or truncated data, and
    for images over `max_pixels` (checked from the header, before decoding; None: no limit).
    """
    data = bytes(data)
    if not data:
        raise ImageError("the image is empty (0 bytes): send the file's content")
    kind = _sniff(data)
    reader = {"JPEG": _read_jpeg, "PNG": _read_png, "TIFF": _read_tiff, "WEBP": _read_webp}
    return reader[kind](data, max_pixels)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding a pixel."""

    format: str  # "JPEG", "PNG", "TIFF" or "WEBP"
    width: int
    height: int


def read_header(data: bytes) -> ImageHeader:
    """The format and stored size of an image file from its header alone (cheap even for a
    huge or hostile file); ImageError when it is not a supported image or the header is damaged.
    `read_image` checks the same header again, so a file that passes here may still fail there."""
    if not data:
        raise ImageError("the image is empty (0 bytes): send the file's content")
    kind = _sniff(data)
    if kind == "JPEG":
        _, width, height, _ = _jpeg_frame(_jpeg_header(data)[0])
    elif kind == "PNG":
        width, height = _png_header(data)[:2]
    else:
        tiff = kind == "TIFF"
        cls = TiffImagePlugin.TiffImageFile if tiff else WebPImagePlugin.WebPImageFile
        width, height = _open_pil(cls, data, "TIFF" if tiff else "WebP").size
    return ImageHeader(kind, int(width), int(height))


def _sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
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


def _check_size(width: int, height: int, max_pixels: int | None, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"the {fmt} header gives an empty size {width}x{height}: re-export it")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (max_pixels): downscale it or raise the limit"
        )


def _read_jpeg(data: bytes, max_pixels: int | None) -> ImageFile:
    segments, scan_start = _jpeg_header(data)
    marker, width, height, frame = _jpeg_frame(segments)
    ncomp = frame[5]
    _check_size(width, height, max_pixels, "JPEG")
    if len(frame) < 6 + 3 * ncomp:
        raise ImageError("the JPEG frame header is cut short: the file is damaged")
    components = [tuple(frame[6 + 3 * i : 9 + 3 * i]) for i in range(ncomp)]
    end = data.find(b"\xff\xd9", scan_start)
    if end < 0:
        raise ImageError(
            "the JPEG is truncated: its image data has no end marker, so part of the picture "
            "is missing; upload the whole file again"
        )

    tables = _jpeg_qtables(segments)
    try:
        qtables = tuple(tuple(int(v) for v in tables[c[2] & 0x0F]) for c in components)
    except KeyError:
        raise ImageError(
            "the JPEG lacks a quantization table it uses: the file is damaged"
        ) from None
    sampling = None
    if ncomp == 3 and all((c[1] >> 4, c[1] & 15) == (1, 1) for c in components[1:]):
        sampling = _SUBSAMPLING.get((components[0][1] >> 4, components[0][1] & 15))
    chroma = np.array(qtables[1]) if ncomp == 3 else None
    quality = estimate_jpeg_quality(np.array(qtables[0]), chroma)

    pixels = decode_jpeg(data, gray=ncomp == 1)
    if pixels.shape[:2] != (height, width):
        raise ImageError("the JPEG image data cannot be decoded: the file is damaged")

    dropped: list[str] = []
    blocks, exif, xmp, icc = _jpeg_metadata(segments, dropped)
    if end + 2 < len(data) and data[end + 2 :].strip(b"\x00\xff"):
        dropped.append(
            f"{len(data) - end - 2} bytes after the end of the image (more pictures, such as "
            "a multi-picture file's other frames)"
        )
    return ImageFile(
        pixels=pixels,
        format="JPEG",
        mode="RGB" if ncomp == 3 else "L",
        bit_depth=8,
        orientation=exif_orientation(exif),
        exif=exif,
        xmp=xmp,
        icc_profile=icc,
        jpeg_quality=quality,
        jpeg_subsampling=sampling,
        jpeg_qtables=qtables,
        progressive=marker in _PROGRESSIVE,
        dropped=tuple(dropped),
        blocks=tuple(blocks),
    )


def _jpeg_frame(segments: list[tuple[int, bytes]]) -> tuple[int, int, int, bytes]:
    """(SOF marker, width, height, frame header) of a JPEG this runtime can decode; ImageError
    naming what is wrong otherwise."""
    sof = next(((m, p) for m, p in segments if m in _SOF_ALL), None)
    if sof is None:
        raise ImageError("the JPEG has no frame header (SOF) before its image data: re-export it")
    marker, frame = sof
    if marker not in _SOF_SUPPORTED:
        raise ImageError(
            f"JPEG frame type 0x{marker:02X} (lossless or hierarchical) is not supported: "
            "re-export it as a baseline or progressive JPEG"
        )
    if len(frame) < 6:
        raise ImageError("the JPEG frame header is cut short: the file is damaged")
    precision, height, width, ncomp = frame[0], *struct.unpack(">HH", frame[1:5]), frame[5]
    if precision != 8:
        raise ImageError(f"{precision}-bit JPEG is not supported: re-export it as 8-bit JPEG")
    if ncomp not in (1, 3):
        raise ImageError(
            f"JPEG with {ncomp} colour components (CMYK/YCCK) is not supported: convert to RGB"
        )
    if height == 0:
        raise ImageError("JPEG with the height after the image data (DNL) is not supported")
    return marker, width, height, frame


def decode_jpeg(data: bytes, *, gray: bool = False, scale: int = 1) -> np.ndarray:
    """The pixels of a JPEG in stored orientation, (H, W, 3) RGB or (H, W) grey uint8, decoded
    strictly: any damage libjpeg reports and would paper over (a scan cut short and padded with
    grey, "premature end of data segment", corrupt Huffman data) is an ImageError, so a damaged
    file is never taken for a whole one. `scale` 2, 4 or 8 decodes at that fraction of the size
    (DCT scaling: it still reads every byte of the image data, so checks the whole file for a
    fraction of the cost). One exception: bytes of junk between the last scan and the end
    marker (libjpeg's "extraneous bytes before marker 0xd9"), which some cameras write after a
    complete picture, are accepted."""
    colorspace = "GRAY" if gray else "RGB"
    # simplejpeg scales only when given a least size too (then the smallest scale that keeps it).
    scaling = {"min_factor": scale, "min_height": 1, "min_width": 1} if scale > 1 else {}
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace, strict=True, **scaling)
    except ValueError as exc:
        message = str(exc)
        if not _JUNK_BEFORE_END.fullmatch(message):
            if "premature end" in message.lower():
                raise ImageError(
                    f"the JPEG is truncated ({message}): part of the picture is missing, and "
                    "decoders would show it as grey; upload the whole file again"
                ) from None
            raise ImageError(f"the JPEG image data is damaged ({message}): re-export it") from None
        pixels = simplejpeg.decode_jpeg(data, colorspace, strict=False, **scaling)
    return pixels[:, :, 0] if gray and pixels.ndim == 3 else pixels


def _jpeg_header(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The (marker, payload) segments from SOI to the first SOS (included), and the offset
    where the image data after that SOS starts."""
    segments: list[tuple[int, bytes]] = []
    pos, size = 2, len(data)
    while True:
        if pos >= size:
            raise ImageError(
                "the JPEG is truncated: it ends inside its header; upload the whole file again"
            )
        if data[pos] != 0xFF:
            raise ImageError(f"the JPEG header is corrupt at byte {pos}: the file is damaged")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            continue
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            continue
        if marker in (_SOI, _EOI):
            raise ImageError("the JPEG has no image data before its end marker: re-export it")
        if pos + 2 > size:
            raise ImageError(
                "the JPEG is truncated: it ends inside its header; upload the whole file again"
            )
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > size:
            raise ImageError(
                "the JPEG is truncated: it ends inside its header; upload the whole file again"
            )
        segments.append((marker, data[pos + 2 : pos + length]))
        pos += length
        if marker == _SOS:
            return segments, pos


def _jpeg_qtables(segments: list[tuple[int, bytes]]) -> dict[int, np.ndarray]:
    """Quantization tables by id, natural order."""
    tables: dict[int, np.ndarray] = {}
    for marker, payload in segments:
        if marker != _DQT:
            continue
        pos = 0
        while pos < len(payload):
            precision, table_id = payload[pos] >> 4, payload[pos] & 0x0F
            width = 2 if precision else 1
            raw = payload[pos + 1 : pos + 1 + 64 * width]
            if len(raw) != 64 * width:
                raise ImageError("a JPEG quantization table is cut short: the file is damaged")
            values = np.frombuffer(raw, ">u2" if width == 2 else np.uint8).astype(np.int64)
            natural = np.empty(64, np.int64)
            natural[_ZIGZAG] = values
            tables[table_id] = natural
            pos += 1 + 64 * width
    return tables


def _jpeg_metadata(
    segments: list[tuple[int, bytes]], dropped: list[str]
) -> tuple[list[bytes], bytes | None, bytes | None, bytes | None]:
    """The APPn/COM segments to write back (whole, marker included), the EXIF, XMP and ICC."""
    blocks: list[bytes] = []
    exif = xmp = None
    icc_segments: list[bytes] = []
    icc_at = 0
    for marker, payload in segments:
        if not (0xE0 <= marker <= 0xEF or marker == _COM):
            continue
        name = f"APP{marker - 0xE0}" if marker != _COM else "COM"
        keep: bytes | None = None
        if marker == _COM:
            keep = screen_text(payload, "JPEG comment", dropped)
        elif marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
            if len(payload) > 14 and any(payload[12:14]):
                dropped.append("JFIF thumbnail (an unanonymized copy of the picture)")
            keep = payload[:12] + b"\x00\x00"
        elif marker == 0xE1 and payload.startswith(_EXIF_ID):
            if exif is None:
                exif = rebuild_exif(payload[len(_EXIF_ID) :], dropped)
                keep = None if exif is None else _EXIF_ID + exif
            else:
                dropped.append("a second EXIF segment")
        elif marker == 0xE1 and payload.startswith(_XMP_ID):
            if xmp is None:
                xmp = clean_xmp(payload[len(_XMP_ID) :], dropped)
                keep = None if xmp is None else _XMP_ID + xmp
            else:
                dropped.append("a second XMP segment")
        elif marker == 0xE2 and payload.startswith(_ICC_ID):
            # Kept or left out whole, once all its parts are read (below).
            icc_at = len(blocks) if not icc_segments else icc_at
            icc_segments.append(payload)
        else:
            ident = payload[:32].split(b"\x00")[0][:24].decode("ascii", "replace")
            why = {
                "MPF": "multi-picture index (its other pictures are not written)",
                "http://ns.adobe.com/xmp/extension/": "extended XMP (may hold images)",
                "Photoshop 3.0": "Photoshop/IPTC block (may hold a thumbnail)",
                "Adobe": "Adobe colour-transform marker (the encoder writes its own)",
                "JFXX": "JFIF extension thumbnail",
            }.get(ident, "segment of unknown content")
            dropped.append(f"{name} {ident!r}: {why}")
        if keep is not None:
            blocks.append(_jpeg_segment(marker, keep))
    icc = None
    if icc_segments:
        profile = b"".join(p[len(_ICC_ID) + 2 :] for p in icc_segments)
        icc = screen_text(profile, "ICC profile", dropped, limit=MAX_INFLATED)
        if icc is not None:
            blocks[icc_at:icc_at] = [_jpeg_segment(0xE2, p) for p in icc_segments]
    return blocks, exif, xmp, icc


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _read_png(data: bytes, max_pixels: int | None) -> ImageFile:
    width, height, depth, color_type = _png_header(data)
    _check_size(width, height, max_pixels, "PNG")
    chunks = png_chunks(data)
    types = [t for t, _ in chunks]
    if b"acTL" in types:
        raise ImageError(
            "animated PNG is not supported (its other frames would not be anonymized): "
            "send the frames as separate images"
        )
    if b"IDAT" not in types:
        raise ImageError("the PNG has no image data (IDAT): re-export it")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.shape[:2] != (height, width):
        raise ImageError("the PNG image data cannot be decoded: the file is damaged")
    dropped: list[str] = []
    if decoded.ndim == 3 and decoded.shape[2] == 4 and color_type in (0, 4) and depth <= 8:
        pixels = np.ascontiguousarray(decoded[:, :, [0, 3]])  # grey+alpha comes as BGRA
    elif decoded.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
        pixels = cv2.cvtColor(decoded, code)
    else:
        pixels = decoded
    mode = _mode_of(pixels)
    if color_type == 3:
        dropped.append(f"palette (written as {mode})")

    blocks: list[bytes] = []
    exif = xmp = icc = None
    for ctype, body in chunks:
        name = ctype.decode("latin-1")
        if ctype in _PNG_STRUCTURE:
            continue
        keep: bytes | None = None
        if ctype == b"eXIf":
            exif = rebuild_exif(bytes(body), dropped)
            keep = exif
        elif ctype in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _png_text(ctype, bytes(body), dropped)
            if keyword == _XMP_KEYWORD and ctype == b"iTXt":
                xmp = clean_xmp(text, dropped) if text is not None else None
                if xmp is not None:
                    keep = _png_xmp_chunk(xmp, compressed=bytes(body)[len(_XMP_KEYWORD) + 1] == 1)
            elif keyword not in _PNG_TEXT_KEYWORDS:
                dropped.append(f"PNG text {keyword.decode('latin-1')!r} (not a standard keyword)")
            elif text is not None:
                what = f"PNG text {keyword.decode('latin-1')!r}"
                keep = bytes(body) if screen_text(text, what, dropped) is not None else None
        elif ctype == b"iCCP":
            _, _, rest = bytes(body).partition(b"\x00")
            icc = _screen_icc(inflate(rest[1:], "ICC profile", dropped), dropped)
            keep = bytes(body) if icc is not None else None
        elif ctype in _PNG_KEEP or ctype in _PNG_SAME_FORMAT:
            keep = bytes(body) if len(body) <= _PNG_FIXED_MAX else None
            if keep is None:
                dropped.append(f"PNG chunk {name!r} ({len(body)} bytes, longer than it can be)")
        else:
            dropped.append(f"PNG chunk {name!r} (unknown content)")
        if keep is not None:
            blocks.append(_png_chunk(ctype, keep))
    return ImageFile(
        pixels=pixels,
        format="PNG",
        mode=mode,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        orientation=exif_orientation(exif),
        exif=exif,
        xmp=xmp,
        icc_profile=icc,
        dropped=tuple(dropped),
        blocks=tuple(blocks),
        png_format=(depth, color_type),
    )


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    if data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13 or len(data) < 33:
        raise ImageError("the PNG does not start with a valid header (IHDR): re-export it")
    return struct.unpack(">IIBB", data[16:26])


def png_chunks(data: bytes) -> list[tuple[bytes, memoryview]]:
    """(type, body) of each chunk up to IEND; the bodies are views into `data`."""
    view = memoryview(data)
    chunks: list[tuple[bytes, memoryview]] = []
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            break
        chunks.append((ctype, view[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            return chunks
    raise ImageError(
        "the PNG is truncated: it has no end chunk (IEND), so part of the picture may be "
        "missing; upload the whole file again"
    )


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_text(ctype: bytes, body: bytes, dropped: list[str]) -> tuple[bytes, bytes | None]:
    """The keyword and text of a tEXt, zTXt or iTXt chunk, inflated (at most MAX_INFLATED
    bytes); the text is None, with the reason in `dropped`, when it cannot be read."""
    keyword, _, rest = body.partition(b"\x00")
    what = f"PNG text {keyword[:80].decode('latin-1')!r}"
    if ctype == b"tEXt":
        return keyword, rest
    if ctype == b"zTXt":
        return keyword, inflate(rest[1:], what, dropped)
    # iTXt: compression flag, method, language \0, translated keyword \0, text
    if len(rest) < 2:
        dropped.append(f"{what} (cut short)")
        return keyword, None
    compressed, rest = rest[0], rest[2:]
    _, _, rest = rest.partition(b"\x00")
    _, _, text = rest.partition(b"\x00")
    return keyword, inflate(text, what, dropped) if compressed else text


def _png_xmp_chunk(xmp: bytes, *, compressed: bool) -> bytes:
    """An iTXt body holding `xmp`, compressed when the original was (so it stays small)."""
    flag = b"\x01\x00" if compressed else b"\x00\x00"
    return _XMP_KEYWORD + b"\x00" + flag + b"\x00\x00" + (zlib.compress(xmp) if compressed else xmp)


def _read_tiff(data: bytes, max_pixels: int | None) -> ImageFile:
    img = _open_pil(TiffImagePlugin.TiffImageFile, data, "TIFF")
    _check_size(img.width, img.height, max_pixels, "TIFF")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageError(
            f"multi-page TIFF ({img.n_frames} pages) is not supported (the other pages would "
            "not be anonymized): send each page as its own image"
        )
    # Metadata first: loading turns the pixels upright and deletes the orientation tag.
    dropped: list[str] = []
    source = img.getexif()
    made = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE:
        if tag in source:
            made[tag] = source[tag]
    for ifd in (EXIF_IFD_TAG, GPS_IFD_TAG):
        sub = source.get_ifd(ifd)
        if sub:
            made.get_ifd(ifd).update(sub)
    exif = rebuild_exif(made.tobytes()[len(_EXIF_ID) :], dropped) if len(made) else None
    orientation = exif_orientation(exif)
    xmp = img.tag_v2.get(700)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    icc = _screen_icc(img.info.get("icc_profile"), dropped)
    compression = img.info.get("compression", "raw")
    _check_tiff_data(img, len(data))
    bits = img.tag_v2.get(258)
    bits = bits if isinstance(bits, tuple) else (bits,)
    if img.mode in ("RGB", "RGBA") and 16 in bits:
        # Pillow would cut 16-bit colour to 8 bits. OpenCV keeps stored orientation.
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None or decoded.ndim != 3 or decoded.dtype != np.uint16:
            raise ImageError("the 16-bit TIFF image data cannot be decoded: the file is damaged")
        code = cv2.COLOR_BGRA2RGBA if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
        pixels = cv2.cvtColor(decoded, code)
        dropped.append("EXIF, XMP and ICC profile (16-bit colour TIFF is written by OpenCV)")
    else:
        pixels = _pil_pixels(img, "TIFF")
        if orientation != 1 and ORIENTATION_TAG not in img.tag_v2:
            pixels = from_upright(pixels, orientation)
    if compression != "raw" and (made.get_ifd(EXIF_IFD_TAG) or made.get_ifd(GPS_IFD_TAG)):
        # Pillow writes EXIF/GPS sub-IFDs only without libtiff, that is uncompressed.
        dropped.append(
            f"TIFF compression {compression!r}: written uncompressed, the only way Pillow "
            "writes the EXIF/GPS sub-IFDs"
        )
        compression = "raw"
    return ImageFile(
        pixels=pixels,
        format="TIFF",
        mode=_mode_of(pixels),
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        orientation=orientation,
        exif=exif,
        xmp=clean_xmp(bytes(xmp), dropped) if xmp else None,
        icc_profile=icc,
        compression=compression,
        dropped=tuple(dropped),
    )


def _check_tiff_data(img: Image.Image, size: int) -> None:
    """Every strip or tile inside the file (not left to Pillow, whose LOAD_TRUNCATED_IMAGES
    setting is global)."""
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):
        offsets, counts = img.tag_v2.get(offsets_tag), img.tag_v2.get(counts_tag)
        if offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        if any(o + c > size for o, c in zip(offsets, counts, strict=False)):
            raise ImageError(
                "the TIFF is truncated: its image data runs past the end of the file; upload "
                "the whole file again"
            )


def _read_webp(data: bytes, max_pixels: int | None) -> ImageFile:
    if int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise ImageError(
            "the WebP is truncated: it is shorter than its header says; upload the whole file again"
        )
    img = _open_pil(WebPImagePlugin.WebPImageFile, data, "WebP")
    _check_size(img.width, img.height, max_pixels, "WebP")
    if getattr(img, "is_animated", False):
        raise ImageError(
            "animated WebP is not supported (its other frames would not be anonymized): "
            "send the frames as separate images"
        )
    pixels = _pil_pixels(img, "WebP")
    dropped: list[str] = []
    raw_exif = img.info.get("exif")
    exif = None
    if raw_exif:
        raw_exif = raw_exif[len(_EXIF_ID) :] if raw_exif.startswith(_EXIF_ID) else raw_exif
        exif = rebuild_exif(raw_exif, dropped)
    xmp = img.info.get("xmp")
    return ImageFile(
        pixels=pixels,
        format="WEBP",
        mode=_mode_of(pixels),
        bit_depth=8,
        orientation=exif_orientation(exif),
        exif=exif,
        xmp=clean_xmp(xmp, dropped) if xmp else None,
        icc_profile=_screen_icc(img.info.get("icc_profile"), dropped),
        lossless=_webp_lossless(data),
        dropped=tuple(dropped),
    )


def _screen_icc(profile: bytes | None, dropped: list[str]) -> bytes | None:
    return screen_text(profile, "ICC profile", dropped, limit=MAX_INFLATED) if profile else None


def _webp_lossless(data: bytes) -> bool:
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return False


def _open_pil(cls: type[Image.Image], data: bytes, fmt: str) -> Image.Image:
    # The plugin class directly: Image.open would apply Pillow's global bomb limit (and warn
    # below it); `max_pixels` is the limit here, checked by the caller from the header.
    try:
        with warnings.catch_warnings():
            # With LOAD_TRUNCATED_IMAGES set, Pillow warns about damaged tags and reads on.
            warnings.simplefilter("error", UserWarning)
            return cls(io.BytesIO(data))  # type: ignore[call-arg]
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, UserWarning) as e:
        raise ImageError(f"the {fmt} header cannot be read ({e}): the file is damaged") from None


def _pil_pixels(img: Image.Image, fmt: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # The caller checked max_pixels; Pillow's own global limit only warns below 2x.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"the {fmt} image is over Pillow's MAX_IMAGE_PIXELS, which something in this "
            f"process set below max_pixels ({e}): raise or unset it"
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        what = "truncated" if "truncat" in str(e).lower() else "damaged"
        raise ImageError(
            f"the {fmt} image data cannot be decoded ({e}): the file is {what}; upload the "
            "whole file again"
        ) from None
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.array(img, dtype=np.uint16)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageError(f"{fmt} images in mode {mode} are not supported: convert to RGB")
    return np.array(img)


def _mode_of(pixels: np.ndarray) -> str:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]


# ---------------------------------------------------------------------------------------------
# Metadata


def estimate_jpeg_quality(luma: np.ndarray, chroma: np.ndarray | None = None) -> int:
    """The IJG quality (1..100) whose scaling of the standard tables is nearest to these
    quantization tables (natural order): exact for tables made that way, else nearest in log
    quantizer size over both tables."""
    luma = np.asarray(luma, np.int64)
    exact = _exact_quality(luma, _IJG_LUMA)
    if exact is not None and (chroma is None or _exact_quality(chroma, _IJG_CHROMA) == exact):
        return exact
    error = np.abs(np.log(_IJG_LUMA) - np.log(np.maximum(luma, 1))).sum(axis=1)
    if chroma is not None:
        chroma = np.asarray(chroma, np.int64)
        error += np.abs(np.log(_IJG_CHROMA) - np.log(np.maximum(chroma, 1))).sum(axis=1)
    return int(np.argmin(error)) + 1


def _exact_quality(table: np.ndarray, candidates: np.ndarray) -> int | None:
    hits = np.flatnonzero((candidates == np.asarray(table)[None, :]).all(axis=1))
    return int(hits[-1]) + 1 if len(hits) else None


# ---------------------------------------------------------------------------------------------
# Orientation and the detector's view

# EXIF orientation -> how the stored pixels are turned to show them upright.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
# ... and back: 6 and 8 undo each other, the others undo themselves.
_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as a viewer shows them (EXIF orientation applied); a contiguous copy unless
    the orientation is 1 (then `pixels` itself)."""
    if orientation == 1:
        return pixels
    return np.ascontiguousarray(_UPRIGHT[_valid(orientation)](pixels))


def from_upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Upright pixels turned back to stored orientation: `from_upright(upright(p, o), o) == p`."""
    if orientation == 1:
        return pixels
    return np.ascontiguousarray(_UPRIGHT[_INVERSE[_valid(orientation)]](pixels))


def _valid(orientation: int) -> int:
    if orientation not in _UPRIGHT:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return orientation


def detector_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) of any pixels here: grey repeated, alpha left out (a viewer that
    ignores it shows the colours), 16 bits cut to their top 8; `pixels` itself when they are
    uint8 RGB already."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    channels = pixels.shape[2]
    if channels in (1, 2):
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return np.ascontiguousarray(pixels[:, :, :3])
    return pixels


# ---------------------------------------------------------------------------------------------
# Writing


def write_image(file: ImageFile, pixels: np.ndarray) -> bytes:
    """`pixels` (stored orientation, the shape and dtype of `file.pixels`) encoded as `file`
    was: same format, mode, depth, JPEG quantization and subsampling, metadata kept."""
    if pixels.shape != file.pixels.shape or pixels.dtype != file.pixels.dtype:
        raise ValueError(
            f"pixels {pixels.shape} {pixels.dtype} do not match the file's "
            f"{file.pixels.shape} {file.pixels.dtype} (pass them in stored orientation)"
        )
    writer = {"JPEG": _write_jpeg, "PNG": _write_png, "TIFF": _write_tiff, "WEBP": _write_webp}
    return writer[file.format](file, np.ascontiguousarray(pixels))


def _write_jpeg(file: ImageFile, pixels: np.ndarray) -> bytes:
    tables = file.jpeg_qtables or ()
    luma = _exact_quality(np.array(tables[0]), _IJG_LUMA) if tables else None
    chroma = [_exact_quality(np.array(t), _IJG_CHROMA) for t in tables[1:]]
    if luma is not None and all(q == luma for q in chroma):
        # OpenCV remakes these tables exactly from the quality, and is the faster encoder.
        params = [cv2.IMWRITE_JPEG_QUALITY, luma]
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, int(file.progressive)]
        if pixels.ndim == 3:
            sampling = _CV2_SAMPLING[file.jpeg_subsampling or "4:2:0"]
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", pixels, params)
        if not ok:
            raise ImageError("OpenCV could not encode the JPEG")
        encoded = buf.tobytes()
    else:
        distinct = list(dict.fromkeys(tables))
        out = io.BytesIO()
        Image.fromarray(pixels).save(
            out,
            "JPEG",
            qtables=[list(t) for t in distinct],
            subsampling=_PIL_SAMPLING[file.jpeg_subsampling or "4:2:0"],
            progressive=file.progressive,
        )
        encoded = out.getvalue()
    segments, scan_start = _jpeg_header(encoded)
    head = b"".join(
        bytes([0xFF, m]) + struct.pack(">H", len(p) + 2) + p
        for m, p in segments
        if not (0xE0 <= m <= 0xEF or m == _COM)
    )
    # Segments end at the SOS header; everything after it is the encoder's scan data.
    return b"\xff\xd8" + b"".join(file.blocks) + head + encoded[scan_start:]


def _write_png(file: ImageFile, pixels: np.ndarray) -> bytes:
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG", compress_level=PNG_COMPRESSION)
        encoded = out.getvalue()
    else:
        if pixels.ndim == 3:
            code = cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
            pixels = cv2.cvtColor(pixels, code)
        ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise ImageError("OpenCV could not encode the PNG")
        encoded = buf.tobytes()
    chunks = png_chunks(encoded)
    header = bytes(chunks[0][1])
    same_format = file.png_format == (header[8], header[9])
    kept = [block for block in file.blocks if block[4:8] not in _PNG_SAME_FORMAT or same_format]
    idat = [_png_chunk(t, bytes(b)) for t, b in chunks if t == b"IDAT"]
    return b"".join(
        [_PNG_SIGNATURE, _png_chunk(b"IHDR", header), *kept, *idat, _png_chunk(b"IEND", b"")]
    )


def _write_tiff(file: ImageFile, pixels: np.ndarray) -> bytes:
    if pixels.dtype == np.uint16 and pixels.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
        ok, buf = cv2.imencode(".tiff", cv2.cvtColor(pixels, code))
        if not ok:
            raise ImageError("OpenCV could not encode the 16-bit TIFF")
        return buf.tobytes()
    img = Image.fromarray(pixels)  # uint16 grey comes as I;16
    kwargs: dict[str, object] = {"compression": file.compression or "raw"}
    if kwargs["compression"] in ("jpeg", "tiff_jpeg"):
        kwargs["compression"] = "tiff_adobe_deflate"  # lossless: no second generation loss
    if file.exif:
        kwargs["exif"] = _EXIF_ID + file.exif
    if file.icc_profile:
        kwargs["icc_profile"] = file.icc_profile
    if file.xmp:
        kwargs["tiffinfo"] = {700: file.xmp}
    out = io.BytesIO()
    img.save(out, "TIFF", **kwargs)
    return out.getvalue()


def _write_webp(file: ImageFile, pixels: np.ndarray) -> bytes:
    kwargs: dict[str, object] = {"lossless": bool(file.lossless), "exact": True}
    if not file.lossless:
        kwargs["quality"] = WEBP_QUALITY
    if file.exif:
        kwargs["exif"] = _EXIF_ID + file.exif
    if file.xmp:
        kwargs["xmp"] = file.xmp
    if file.icc_profile:
        kwargs["icc_profile"] = file.icc_profile
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WEBP", **kwargs)
    return out.getvalue()
