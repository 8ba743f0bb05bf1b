"""JPEG files: the header parsed here, pixels decoded strictly with simplejpeg and encoded
with OpenCV at the file's own quantization tables and chroma subsampling, metadata segments
kept by allowlist (`metadata`)."""

from __future__ import annotations

import io
import re
import struct

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from serving.runtime.errors import ImageError, IncompleteImageError
from serving.runtime.imagefile.formats import ImageFile, check_size
from serving.runtime.imagefile.metadata import (
    EXIF_ID,
    MAX_INFLATED,
    clean_xmp,
    exif_orientation,
    rebuild_exif,
    screen_text,
)

# JPEG markers.
_SOI, _EOI, _SOS, _DQT, _COM = 0xD8, 0xD9, 0xDA, 0xDB, 0xFE
_SOF_SUPPORTED = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # baseline, extended, progressive (+ arithmetic)
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xCA, 0xC6, 0xCE}
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


def read_jpeg(data: bytes, max_pixels: int | None) -> ImageFile:
    segments, scan_start = jpeg_header(data)
    marker, width, height, frame = jpeg_frame(segments)
    ncomp = frame[5]
    check_size(width, height, max_pixels, "JPEG")
    if len(frame) < 6 + 3 * ncomp:
        raise ImageError("the JPEG frame header is cut short: the file is damaged")
    components = [tuple(frame[6 + 3 * i : 9 + 3 * i]) for i in range(ncomp)]
    end = data.find(b"\xff\xd9", scan_start)
    if end < 0:
        raise IncompleteImageError(
            "the JPEG is truncated: its image data has no end marker, so part of the picture "
            "is missing"
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


def jpeg_frame(segments: list[tuple[int, bytes]]) -> tuple[int, int, int, bytes]:
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
                raise IncompleteImageError(
                    f"the JPEG is truncated ({message}): part of the picture is missing, and "
                    "decoders would show it as grey"
                ) from None
            raise ImageError(f"the JPEG image data is damaged ({message}): re-export it") from None
        pixels = simplejpeg.decode_jpeg(data, colorspace, strict=False, **scaling)
    return pixels[:, :, 0] if gray and pixels.ndim == 3 else pixels


def jpeg_header(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The (marker, payload) segments from SOI to the first SOS (included), and the offset
    where the image data after that SOS starts."""
    segments: list[tuple[int, bytes]] = []
    pos, size = 2, len(data)
    while True:
        if pos >= size:
            raise IncompleteImageError("the JPEG is truncated: it ends inside its header")
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
            raise IncompleteImageError("the JPEG is truncated: it ends inside its header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > size:
            raise IncompleteImageError("the JPEG is truncated: it ends inside its header")
        segments.append((marker, data[pos + 2 : pos + length]))
        pos += length
        if marker == _SOS:
            return segments, pos


def jpeg_orientation(segments: list[tuple[int, bytes]]) -> int:
    """The EXIF orientation (1..8) of a JPEG from its header segments (`jpeg_header`): that of
    its first EXIF segment as `read_jpeg` keeps it (rebuilt), 1 when there is none."""
    for marker, payload in segments:
        if marker == 0xE1 and payload.startswith(EXIF_ID):
            return exif_orientation(rebuild_exif(payload[len(EXIF_ID) :], []))
    return 1


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
        elif marker == 0xE1 and payload.startswith(EXIF_ID):
            if exif is None:
                exif = rebuild_exif(payload[len(EXIF_ID) :], dropped)
                keep = None if exif is None else EXIF_ID + exif
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


def write_jpeg(file: ImageFile, pixels: np.ndarray) -> bytes:
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
    segments, scan_start = jpeg_header(encoded)
    head = b"".join(
        bytes([0xFF, m]) + struct.pack(">H", len(p) + 2) + p
        for m, p in segments
        if not (0xE0 <= m <= 0xEF or m == _COM)
    )
    # Segments end at the SOS header; everything after it is the encoder's scan data.
    return b"\xff\xd8" + b"".join(file.blocks) + head + encoded[scan_start:]
