"""TIFF and WebP files, through Pillow (16-bit colour TIFF through OpenCV): kept as far as those
libraries can write them, with metadata by allowlist (`metadata`); what they cannot write is
named in `ImageFile.dropped`."""

from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin, WebPImagePlugin

from serving.runtime.errors import ImageError, IncompleteImageError
from serving.runtime.imagefile.formats import ImageFile, check_size, mode_of
from serving.runtime.imagefile.metadata import (
    EXIF_ID,
    EXIF_IFD_TAG,
    GPS_IFD_TAG,
    ORIENTATION_TAG,
    clean_xmp,
    exif_orientation,
    rebuild_exif,
    screen_icc,
)
from serving.runtime.imagefile.view import from_upright

# Lossy WebP does not record its quality; re-encoding uses this one.
WEBP_QUALITY = 90
# TIFF tags written back (descriptive ones; structure is the encoder's).
_TIFF_DESCRIPTIVE = (269, 270, 271, 272, 274, 282, 283, 285, 296, 305, 306, 315, 316, 33432)


def read_tiff(data: bytes, max_pixels: int | None) -> ImageFile:
    img = open_pil(TiffImagePlugin.TiffImageFile, data, "TIFF")
    check_size(img.width, img.height, max_pixels, "TIFF")
    if getattr(img, "n_frames", 1) > 1:
        pages = (
            f"multi-page TIFF ({img.n_frames} pages) is not supported (the other pages would "
            "not be anonymized)"
        )
        raise ImageError(
            f"{pages}: save each page as its own file",
            upload=f"{pages}: send each page as its own image",
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
    exif = rebuild_exif(made.tobytes()[len(EXIF_ID) :], dropped) if len(made) else None
    orientation = exif_orientation(exif)
    xmp = img.tag_v2.get(700)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    icc = screen_icc(img.info.get("icc_profile"), dropped)
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
        mode=mode_of(pixels),
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
            raise IncompleteImageError(
                "the TIFF is truncated: its image data runs past the end of the file"
            )


def read_webp(data: bytes, max_pixels: int | None) -> ImageFile:
    if int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise IncompleteImageError("the WebP is truncated: it is shorter than its header says")
    img = open_pil(WebPImagePlugin.WebPImageFile, data, "WebP")
    check_size(img.width, img.height, max_pixels, "WebP")
    if getattr(img, "is_animated", False):
        animated = "animated WebP is not supported (its other frames would not be anonymized)"
        raise ImageError(
            f"{animated}: save the frames as separate files",
            upload=f"{animated}: send the frames as separate images",
        )
    pixels = _pil_pixels(img, "WebP")
    dropped: list[str] = []
    raw_exif = img.info.get("exif")
    exif = None
    if raw_exif:
        raw_exif = raw_exif[len(EXIF_ID) :] if raw_exif.startswith(EXIF_ID) else raw_exif
        exif = rebuild_exif(raw_exif, dropped)
    xmp = img.info.get("xmp")
    return ImageFile(
        pixels=pixels,
        format="WEBP",
        mode=mode_of(pixels),
        bit_depth=8,
        orientation=exif_orientation(exif),
        exif=exif,
        xmp=clean_xmp(xmp, dropped) if xmp else None,
        icc_profile=screen_icc(img.info.get("icc_profile"), dropped),
        lossless=_webp_lossless(data),
        dropped=tuple(dropped),
    )


def _webp_lossless(data: bytes) -> bool:
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return False


def pil_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) of a TIFF or WebP ("TIFF", "WEBP") from its header, nothing decoded."""
    if kind == "TIFF":
        return open_pil(TiffImagePlugin.TiffImageFile, data, "TIFF").size
    return open_pil(WebPImagePlugin.WebPImageFile, data, "WebP").size


def open_pil(cls: type[Image.Image], data: bytes, fmt: str) -> Image.Image:
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
        raise IncompleteImageError(
            f"the {fmt} image data cannot be decoded ({e}): the file is {what}"
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


def write_tiff(file: ImageFile, pixels: np.ndarray) -> bytes:
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
        kwargs["exif"] = EXIF_ID + file.exif
    if file.icc_profile:
        kwargs["icc_profile"] = file.icc_profile
    if file.xmp:
        kwargs["tiffinfo"] = {700: file.xmp}
    out = io.BytesIO()
    img.save(out, "TIFF", **kwargs)
    return out.getvalue()


def write_webp(file: ImageFile, pixels: np.ndarray) -> bytes:
    kwargs: dict[str, object] = {"lossless": bool(file.lossless), "exact": True}
    if not file.lossless:
        kwargs["quality"] = WEBP_QUALITY
    if file.exif:
        kwargs["exif"] = EXIF_ID + file.exif
    if file.xmp:
        kwargs["xmp"] = file.xmp
    if file.icc_profile:
        kwargs["icc_profile"] = file.icc_profile
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WEBP", **kwargs)
    return out.getvalue()
