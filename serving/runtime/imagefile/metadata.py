"""What of an image file's metadata the runtime writes back: an allowlist, never a blocklist.

An anonymized file must not carry a copy of the picture it hides, and cameras hide copies in
many places (EXIF thumbnails, SubIFD previews, maker notes, XMP thumbnails under any namespace
prefix, text chunks, comments). So nothing is kept for not looking like an image; fields are
kept because they are known to hold none:

- EXIF is rebuilt from scratch (same byte order) with only the tags of `EXIF_ALLOWED`:
  orientation, capture time, GPS, and camera and exposure tags. Each value is copied by type
  and count, at most `MAX_EXIF_VALUE` bytes. Everything else (IFD1 and its thumbnail, SubIFDs,
  maker notes, user comments, interoperability and private tags) is left out and named, and so
  are the bytes between the kept values: a rebuilt block holds nothing the tags do not say.
- XMP keeps its text without the properties that hold pictures: the known image properties
  (xmpGImg:image, GImage:Data, GDepth:Data, GDepth:Confidence) under whatever prefix the packet
  binds to their namespace, and any binary value (a run of `_BINARY_RUN` or more base64
  characters), so an unknown or renamed property cannot carry one either.
- Free text (PNG text chunks with a standard keyword, JPEG comments) is kept up to
  `MAX_TEXT_BYTES`; ICC profiles are kept. Each kept piece is searched for a picture in any
  form (`embedded.find_pictures`: raw JPEG/PNG/WebP/GIF/HEIF, base64 or hex) and left out if
  one is found.
- Every decompression of metadata (PNG zTXt/iTXt/iCCP) stops at `MAX_INFLATED` bytes: an
  over-long one is left out, so a small file cannot inflate into gigabytes.

Each left-out piece is named, with why, in the caller's `dropped` list (the blur sidecar's and
the service's `metadata_dropped`).
"""

from __future__ import annotations

import logging
import re
import struct
import zlib

from serving.runtime.imagefile.embedded import find_pictures

__all__ = [
    "EXIF_ALLOWED",
    "EXIF_ID",
    "EXIF_IFD_TAG",
    "GPS_IFD_TAG",
    "MAX_EXIF_VALUE",
    "MAX_INFLATED",
    "MAX_TEXT_BYTES",
    "MAX_XMP_BYTES",
    "ORIENTATION_TAG",
    "BadExif",
    "byte_order",
    "clean_xmp",
    "exif_orientation",
    "ifd_entries",
    "inflate",
    "rebuild_exif",
    "screen_icc",
    "screen_text",
    "u16",
    "u32",
]

log = logging.getLogger(__name__)

EXIF_ID = b"Exif\x00\x00"  # what precedes TIFF-structured EXIF in JPEG APP1 and Pillow's info
MAX_INFLATED = 4 << 20  # bytes: the most any metadata decompression may produce
MAX_XMP_BYTES = 4 << 20
MAX_TEXT_BYTES = 2048  # a PNG text chunk or JPEG comment longer than this is left out
MAX_EXIF_VALUE = 256  # bytes of one EXIF value (a 64-character camera name is 65)

ORIENTATION_TAG = 0x0112
EXIF_IFD_TAG = 0x8769
GPS_IFD_TAG = 0x8825

# The EXIF tags written back, per IFD, with their names. None of them can hold a picture, and
# their values are bounded by MAX_EXIF_VALUE.
_IFD0_TAGS = {
    0x010F: "Make",
    0x0110: "Model",
    0x0112: "Orientation",
    0x011A: "XResolution",
    0x011B: "YResolution",
    0x0128: "ResolutionUnit",
    0x0131: "Software",
    0x0132: "DateTime",
    0x013B: "Artist",
    0x0213: "YCbCrPositioning",
    0x8298: "Copyright",
}
_EXIF_TAGS = {
    0x829A: "ExposureTime",
    0x829D: "FNumber",
    0x8822: "ExposureProgram",
    0x8827: "ISOSpeedRatings",
    0x8830: "SensitivityType",
    0x9000: "ExifVersion",
    0x9003: "DateTimeOriginal",
    0x9004: "DateTimeDigitized",
    0x9010: "OffsetTime",
    0x9011: "OffsetTimeOriginal",
    0x9012: "OffsetTimeDigitized",
    0x9101: "ComponentsConfiguration",
    0x9201: "ShutterSpeedValue",
    0x9202: "ApertureValue",
    0x9203: "BrightnessValue",
    0x9204: "ExposureBiasValue",
    0x9205: "MaxApertureValue",
    0x9206: "SubjectDistance",
    0x9207: "MeteringMode",
    0x9208: "LightSource",
    0x9209: "Flash",
    0x920A: "FocalLength",
    0x9290: "SubSecTime",
    0x9291: "SubSecTimeOriginal",
    0x9292: "SubSecTimeDigitized",
    0xA000: "FlashpixVersion",
    0xA001: "ColorSpace",
    0xA002: "PixelXDimension",
    0xA003: "PixelYDimension",
    0xA217: "SensingMethod",
    0xA401: "CustomRendered",
    0xA402: "ExposureMode",
    0xA403: "WhiteBalance",
    0xA404: "DigitalZoomRatio",
    0xA405: "FocalLengthIn35mmFilm",
    0xA406: "SceneCaptureType",
    0xA408: "Contrast",
    0xA409: "Saturation",
    0xA40A: "Sharpness",
    0xA420: "ImageUniqueID",
    0xA431: "BodySerialNumber",
    0xA432: "LensSpecification",
    0xA433: "LensMake",
    0xA434: "LensModel",
    0xA435: "LensSerialNumber",
}
# GPS: every tag of the standard (0x00 version .. 0x1F horizontal error), values bounded.
_GPS_TAGS = {tag: f"GPS tag 0x{tag:02X}" for tag in range(0x20)}
EXIF_ALLOWED = {"IFD0": _IFD0_TAGS, "Exif": _EXIF_TAGS, "GPS": _GPS_TAGS}

# Tags worth naming when they are left out: where cameras keep pictures.
_NOTABLE = {
    0x014A: "EXIF SubIFDs (previews of the picture)",
    0x927C: "EXIF maker note (vendors keep preview images there)",
    0x0201: "EXIF JPEG thumbnail pointer",
    0x9286: "EXIF user comment (free text)",
    0x8773: "EXIF inter-colour profile (the ICC profile is kept on its own)",
    0xC4A5: "EXIF print image matching block",
}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}

# XMP: the namespaces of properties that hold a whole picture, their usual prefixes, and the
# property names (Adobe thumbnails, Google camera and depth images).
_XMP_IMAGE_NAMESPACES = {
    b"http://ns.adobe.com/xap/1.0/g/img/": (b"image",),
    b"http://ns.google.com/photos/1.0/image/": (b"Data",),
    b"http://ns.google.com/photos/1.0/depthmap/": (b"Data", b"Confidence"),
}
_XMP_USUAL_PREFIXES = {
    b"xmpGImg": b"http://ns.adobe.com/xap/1.0/g/img/",
    b"xapGImg": b"http://ns.adobe.com/xap/1.0/g/img/",
    b"GImage": b"http://ns.google.com/photos/1.0/image/",
    b"GDepth": b"http://ns.google.com/photos/1.0/depthmap/",
}
_XMLNS = re.compile(rb"""xmlns:([A-Za-z_][\w.\-]*)\s*=\s*(["'])(.*?)\2""", re.S)
# A run this long of base64 characters is binary data, not text (no word is 64 letters long).
_BINARY_RUN = 64
_BINARY_VALUE = re.compile(rb"[A-Za-z0-9+/]{%d,}={0,2}" % _BINARY_RUN)


class BadExif(Exception):
    """EXIF whose structure cannot be followed."""


# ---------------------------------------------------------------------------------------------
# EXIF


def exif_orientation(exif: bytes | None) -> int:
    """The orientation tag (1..8) of TIFF-structured EXIF bytes; 1 when absent or invalid."""
    if not exif:
        return 1
    try:
        order = byte_order(exif)
        for tag, typ, count, value_pos in ifd_entries(exif, u32(exif, 4, order), order)[0]:
            if tag == ORIENTATION_TAG and typ == 3 and count >= 1:
                value = u16(exif, value_pos, order)
                return value if 1 <= value <= 8 else 1
    except (BadExif, struct.error):
        pass
    return 1


def rebuild_exif(tiff: bytes, dropped: list[str]) -> bytes | None:
    """A new EXIF block (TIFF-structured, no "Exif" prefix, the same byte order) holding only
    the allowed tags of `tiff`'s IFD0, Exif and GPS IFDs; None when none is left or the block
    cannot be parsed. What is left out is appended to `dropped`."""
    left_out: list[int] = []
    subs: dict[int, list[tuple[int, int, int, bytes]]] = {}
    try:
        order = byte_order(tiff)
        entries, next_pos = ifd_entries(tiff, u32(tiff, 4, order), order)
        pointers = [e for e in entries if e[0] in (EXIF_IFD_TAG, GPS_IFD_TAG)]
        ifd0 = _allowed(
            tiff, [e for e in entries if e not in pointers], order, _IFD0_TAGS, left_out
        )
        for tag, typ, count, value_pos in pointers:
            name = "Exif" if tag == EXIF_IFD_TAG else "GPS"
            try:
                if typ not in (4, 13) or count != 1:
                    raise BadExif(f"its pointer has type {typ} and count {count}")
                sub_entries, _ = ifd_entries(tiff, u32(tiff, value_pos, order), order)
            except BadExif as exc:
                dropped.append(f"EXIF {name} IFD (malformed, so it cannot be checked: {exc})")
                continue
            subs[tag] = _allowed(tiff, sub_entries, order, EXIF_ALLOWED[name], left_out)
        if u32(tiff, next_pos, order):
            dropped.append("EXIF thumbnail (an unanonymized copy of the picture)")
    except (BadExif, struct.error) as exc:
        dropped.append(f"EXIF (malformed, so its content cannot be checked: {exc})")
        log.warning("EXIF block dropped: malformed (%s)", exc)
        return None
    dropped.extend(_NOTABLE[tag] for tag in left_out if tag in _NOTABLE)
    rest = [f"0x{tag:04X}" for tag in left_out if tag not in _NOTABLE]
    if rest:
        dropped.append(f"EXIF tags not on the allowlist ({', '.join(rest)})")
    subs = {tag: values for tag, values in subs.items() if values}
    if not ifd0 and not subs:
        return None
    return _write_exif(order, ifd0, subs)


def _allowed(
    tiff: bytes,
    entries: list[tuple[int, int, int, int]],
    order: str,
    allowed: dict[int, str],
    left_out: list[int],
) -> list[tuple[int, int, int, bytes]]:
    """(tag, type, count, raw value bytes) of the entries on the allowlist with a readable
    value of at most MAX_EXIF_VALUE bytes; the tags of the others go to `left_out`."""
    kept = []
    for tag, typ, count, value_pos in entries:
        size = count * _TYPE_SIZES.get(typ, 0)
        start = value_pos if size <= 4 else u32(tiff, value_pos, order)
        if tag not in allowed or not 0 < size <= MAX_EXIF_VALUE or start + size > len(tiff):
            left_out.append(tag)
            continue
        kept.append((tag, typ, count, bytes(tiff[start : start + size])))
    return kept


def _write_exif(
    order: str,
    ifd0: list[tuple[int, int, int, bytes]],
    subs: dict[int, list[tuple[int, int, int, bytes]]],
) -> bytes:
    """TIFF-structured EXIF: IFD0 (with pointers to the sub-IFDs), then each sub-IFD, each IFD
    followed by its values longer than 4 bytes; tags in ascending order, values word-aligned.
    The same input gives the same bytes, so rebuilding a rebuilt block changes nothing."""
    tables = [sorted(ifd0 + [(tag, 4, 1, bytes(4)) for tag in sorted(subs)])]
    tables += [sorted(subs[tag]) for tag in sorted(subs)]
    offsets = [8]
    for table in tables[:-1]:
        offsets.append(offsets[-1] + _ifd_size(table))
    pointers = dict(zip(sorted(subs), offsets[1:], strict=True))
    tables[0] = [
        (tag, typ, count, struct.pack(order + "I", pointers[tag]) if tag in pointers else raw)
        for tag, typ, count, raw in tables[0]
    ]
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    return header + b"".join(
        _ifd_bytes(table, offset, order) for table, offset in zip(tables, offsets, strict=True)
    )


def _ifd_size(table: list[tuple[int, int, int, bytes]]) -> int:
    return 2 + 12 * len(table) + 4 + sum(_padded(len(raw)) for *_, raw in table if len(raw) > 4)


def _padded(size: int) -> int:
    return size + (size & 1)


def _ifd_bytes(table: list[tuple[int, int, int, bytes]], offset: int, order: str) -> bytes:
    data_at = offset + 2 + 12 * len(table) + 4
    head = [struct.pack(order + "H", len(table))]
    data: list[bytes] = []
    for tag, typ, count, raw in table:
        if len(raw) <= 4:
            value = raw.ljust(4, b"\x00")
        else:
            value = struct.pack(order + "I", data_at)
            data.append(raw.ljust(_padded(len(raw)), b"\x00"))
            data_at += _padded(len(raw))
        head.append(struct.pack(order + "HHI", tag, typ, count) + value)
    return b"".join(head) + struct.pack(order + "I", 0) + b"".join(data)


def byte_order(buf: bytes | bytearray) -> str:
    if len(buf) < 8 or bytes(buf[:4]) not in (b"II*\x00", b"MM\x00*"):
        raise BadExif("no TIFF header")
    return "<" if buf[:2] == b"II" else ">"


def u16(buf: bytes | bytearray, pos: int, order: str) -> int:
    return struct.unpack_from(order + "H", buf, pos)[0]


def u32(buf: bytes | bytearray, pos: int, order: str) -> int:
    return struct.unpack_from(order + "I", buf, pos)[0]


def ifd_entries(
    buf: bytes | bytearray, offset: int, order: str
) -> tuple[list[tuple[int, int, int, int]], int]:
    """(tag, type, count, position of the value field) of each entry of the IFD at `offset`,
    and the position of its next-IFD pointer."""
    if offset < 8 or offset + 2 > len(buf):
        raise BadExif(f"IFD offset {offset} outside the block")
    count = u16(buf, offset, order)
    if offset + 2 + 12 * count + 4 > len(buf):
        raise BadExif("IFD runs past the block")
    entries = []
    for k in range(count):
        pos = offset + 2 + 12 * k
        tag, typ, n = struct.unpack_from(order + "HHI", buf, pos)
        entries.append((tag, typ, n, pos + 8))
    return entries, offset + 2 + 12 * count


# ---------------------------------------------------------------------------------------------
# XMP, text, ICC


def clean_xmp(xmp: bytes, dropped: list[str]) -> bytes | None:
    """The XMP packet without picture-bearing properties (module docstring); None when it is
    over MAX_XMP_BYTES or a picture is still found in it."""
    if len(xmp) > MAX_XMP_BYTES:
        dropped.append(f"XMP ({len(xmp)} bytes, over the {MAX_XMP_BYTES}-byte limit)")
        return None
    prefixes = dict(_XMP_USUAL_PREFIXES)
    prefixes.update({m.group(1): m.group(3).strip() for m in _XMLNS.finditer(xmp)})
    cleaned = xmp
    for prefix, namespace in prefixes.items():
        for prop in _XMP_IMAGE_NAMESPACES.get(namespace, ()):
            name = re.escape(prefix + b":" + prop)
            attribute = rb"""(\b%s\s*=\s*)(["']).*?\2""" % name
            cleaned = re.sub(attribute, rb"\1\2\2", cleaned, flags=re.S)
            cleaned = re.sub(
                rb"(<%s\b[^>]*>).*?(</%s\s*>)" % (name, name), rb"\1\2", cleaned, flags=re.S
            )
    if cleaned != xmp:
        dropped.append("XMP embedded images (thumbnails or camera/depth pictures)")
    binary_free = _BINARY_VALUE.sub(b"", cleaned)
    if binary_free != cleaned:
        dropped.append("XMP binary values (base64 data, which may hold pictures)")
    return screen_text(binary_free, "XMP", dropped, limit=MAX_XMP_BYTES)


def screen_text(
    data: bytes, what: str, dropped: list[str], *, limit: int = MAX_TEXT_BYTES
) -> bytes | None:
    """`data` when it is at most `limit` bytes and holds no picture in any form; else None,
    with the reason in `dropped`."""
    if len(data) > limit:
        dropped.append(f"{what} ({len(data)} bytes, over the {limit}-byte limit)")
        return None
    found = find_pictures(data)
    if found:
        dropped.append(f"{what} (holds a picture: {found[0]})")
        return None
    return data


def screen_icc(profile: bytes | None, dropped: list[str]) -> bytes | None:
    """An ICC profile when it holds no picture (at most MAX_INFLATED bytes); else None."""
    return screen_text(profile, "ICC profile", dropped, limit=MAX_INFLATED) if profile else None


def inflate(data: bytes | memoryview, what: str, dropped: list[str]) -> bytes | None:
    """zlib-decompressed `data`, stopping at MAX_INFLATED bytes; None (with the reason in
    `dropped`) when it is damaged or would inflate past that."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(bytes(data), MAX_INFLATED + 1)
    except zlib.error as exc:
        dropped.append(f"{what} (damaged compressed data: {exc})")
        return None
    if len(out) > MAX_INFLATED or inflater.unconsumed_tail:
        dropped.append(f"{what} (inflates past the {MAX_INFLATED}-byte limit)")
        return None
    return out
