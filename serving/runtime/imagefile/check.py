"""The last check before an anonymized file is handed out: it holds one picture, its own.

Metadata is kept by allowlist (`metadata`), but whatever writes the file (OpenCV, Pillow, the
metadata blocks carried over) is checked once more on the bytes themselves: the file is parsed
into its image data (JPEG entropy-coded scans, PNG IDAT, WebP VP8/VP8L/ALPH, TIFF strips or
tiles) and the rest (headers, metadata, anything after the end of the image), and the rest must
hold no picture in any form (`embedded.find_pictures`: a JPEG, PNG, WebP, GIF or HEIF file, raw,
in base64 or in hex) and nothing after the image's end. Compressed metadata (PNG zTXt, iTXt,
iCCP) is inflated (at most `metadata.MAX_INFLATED` bytes) and checked too. A file that fails is
an ImageError: the caller writes nothing for that image (fail closed) and records why.
"""

from __future__ import annotations

import re
import struct

from serving.runtime.errors import ImageError
from serving.runtime.imagefile.embedded import find_pictures
from serving.runtime.imagefile.metadata import BadExif, byte_order, ifd_entries, inflate, u32
from serving.runtime.imagefile.png import png_chunks

__all__ = ["check_output"]

# JPEG segments that are the codec's own tables and headers, not metadata.
_JPEG_CODEC = {0xC4, 0xCC, 0xDB, 0xDD} | {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xCC)}
_SOS, _EOI = 0xDA, 0xD9
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
_PNG_IMAGE = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_WEBP_IMAGE = {b"VP8 ", b"VP8L", b"ALPH", b"VP8X"}


def check_output(data: bytes, fmt: str) -> None:
    """Raise ImageError unless everything in `data` (a file of format `fmt`) outside its image
    data is free of pictures and nothing follows the image's end."""
    parts = {"JPEG": _jpeg_parts, "PNG": _png_parts, "WEBP": _webp_parts, "TIFF": _tiff_parts}
    try:
        metadata = parts[fmt](data)
    except (IndexError, ValueError, struct.error, BadExif) as exc:
        raise _refused(f"its structure cannot be followed ({exc})") from None
    for part in metadata:
        found = find_pictures(part)
        if found:
            raise _refused(f"it would still hold {found[0]} in its metadata")


def _refused(why: str) -> ImageError:
    message = (
        f"the anonymized file was not written: {why}; the input carries an unanonymized copy "
        "of the picture where the runtime does not know to remove it. Strip the input's "
        "metadata (e.g. exiftool -all=)"
    )
    return ImageError(f"{message} and anonymize it again", upload=f"{message} and send it again")


def _jpeg_parts(data: bytes) -> list[bytes]:
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("no start-of-image marker")
    parts: list[bytes] = []
    pos = 2
    while True:
        while data[pos] != 0xFF or data[pos + 1] == 0xFF:
            if data[pos] != 0xFF:
                raise ValueError(f"no marker at byte {pos}")
            pos += 1
        marker = data[pos + 1]
        pos += 2
        if marker == _EOI:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        length = struct.unpack_from(">H", data, pos)[0]
        if marker not in _JPEG_CODEC and marker != _SOS:
            parts.append(data[pos + 2 : pos + length])
        pos += length
        if marker == _SOS:
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                raise ValueError("a scan runs to the end of the file")
            pos = found.start()
    if pos < len(data):
        raise ValueError(f"{len(data) - pos} bytes follow the end of the image")
    return parts


def _png_parts(data: bytes) -> list[bytes]:
    parts: list[bytes] = []
    chunks = png_chunks(data)
    end = 8 + sum(12 + len(body) for _, body in chunks)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes follow the end of the image")
    for ctype, body in chunks:
        if ctype in _PNG_IMAGE:
            continue
        raw = bytes(body)
        parts.append(raw)
        rest = raw.partition(b"\x00")[2]
        packed = {b"zTXt": rest[1:], b"iCCP": rest[1:]}.get(ctype)
        if ctype == b"iTXt" and rest[:1] == b"\x01":
            packed = rest[2:].partition(b"\x00")[2].partition(b"\x00")[2]
        if packed is not None:
            parts.append(_inflate(packed, ctype))
    return parts


def _inflate(packed: bytes, ctype: bytes) -> bytes:
    why: list[str] = []
    out = inflate(packed, f"a {ctype.decode('latin-1')} chunk", why)
    if out is None:
        raise ValueError(why[-1])
    return out


def _webp_parts(data: bytes) -> list[bytes]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("no RIFF/WEBP header")
    end = 8 + int.from_bytes(data[4:8], "little")
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes follow the end of the image")
    parts: list[bytes] = []
    pos = 12
    while pos < end:
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > end:
            raise ValueError(f"chunk {fourcc!r} runs past the end of the file")
        if fourcc not in _WEBP_IMAGE:
            parts.append(data[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)
    return parts


def _tiff_parts(data: bytes) -> list[bytes]:
    """Everything but the strips or tiles of the first image (the only one written)."""
    order = byte_order(data)
    entries, _ = ifd_entries(data, u32(data, 4, order), order)
    values = {tag: _uints(data, typ, count, pos, order) for tag, typ, count, pos in entries}
    spans: list[tuple[int, int]] = []
    for offsets, counts in ((273, 279), (324, 325)):
        spans += zip(values.get(offsets, []), values.get(counts, []), strict=False)
    parts, pos = [], 0
    for start, length in sorted(spans):
        if start < pos or start + length > len(data):
            raise ValueError("overlapping or out-of-file image data")
        parts.append(data[pos:start])
        pos = start + length
    parts.append(data[pos:])
    return parts


def _uints(data: bytes, typ: int, count: int, value_pos: int, order: str) -> list[int]:
    if typ not in (3, 4) or count > len(data):
        return []
    size = count * (2 if typ == 3 else 4)
    start = value_pos if size <= 4 else u32(data, value_pos, order)
    return list(struct.unpack_from(f"{order}{count}{'H' if typ == 3 else 'I'}", data, start))
