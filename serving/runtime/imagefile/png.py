"""PNG files: decoded and encoded with OpenCV (16 bits per channel kept), the encoder's IHDR and
IDAT written with the original's metadata chunks put back, kept by allowlist (`metadata`)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from serving.runtime.errors import ImageError, IncompleteImageError
from serving.runtime.imagefile.formats import PNG_SIGNATURE, ImageFile, check_size, mode_of
from serving.runtime.imagefile.metadata import (
    clean_xmp,
    exif_orientation,
    inflate,
    rebuild_exif,
    screen_icc,
    screen_text,
)

# zlib level for PNG output: near the best size at a fraction of level 9's time.
PNG_COMPRESSION = 4
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
_XMP_KEYWORD = b"XML:com.adobe.xmp"


def read_png(data: bytes, max_pixels: int | None) -> ImageFile:
    width, height, depth, color_type = png_header(data)
    check_size(width, height, max_pixels, "PNG")
    chunks = png_chunks(data)
    types = [t for t, _ in chunks]
    if b"acTL" in types:
        animated = "animated PNG is not supported (its other frames would not be anonymized)"
        raise ImageError(
            f"{animated}: save the frames as separate files",
            upload=f"{animated}: send the frames as separate images",
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
    mode = mode_of(pixels)
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
            icc = screen_icc(inflate(rest[1:], "ICC profile", dropped), dropped)
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


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    if data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13 or len(data) < 33:
        raise ImageError("the PNG does not start with a valid header (IHDR): re-export it")
    return struct.unpack(">IIBB", data[16:26])


def png_chunks(data: bytes) -> list[tuple[bytes, memoryview]]:
    """(type, body) of each chunk up to IEND; the bodies are views into `data`."""
    view = memoryview(data)
    chunks: list[tuple[bytes, memoryview]] = []
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            break
        chunks.append((ctype, view[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            return chunks
    raise IncompleteImageError(
        "the PNG is truncated: it has no end chunk (IEND), so part of the picture may be missing"
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


def write_png(file: ImageFile, pixels: np.ndarray) -> bytes:
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
        [PNG_SIGNATURE, _png_chunk(b"IHDR", header), *kept, *idat, _png_chunk(b"IEND", b"")]
    )
