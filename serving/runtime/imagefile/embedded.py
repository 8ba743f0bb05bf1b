"""Find pictures inside bytes that should hold none (metadata): an image file as it is, or
written out as base64 or hex text, as cameras and editors embed thumbnails and previews.

A picture is recognised by its format's signature: JPEG (SOI followed by a marker segment),
PNG, WebP, GIF, HEIF/AVIF and JPEG XL. Base64 is looked for in every run of base64 characters
(line breaks and padding allowed inside, the URL-safe alphabet too), decoded at each of the four
character offsets, so a picture is found wherever in the run it starts.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["find_pictures"]

_SIGNATURES = (
    ("JPEG", re.compile(rb"\xff\xd8\xff[\xc0-\xcf\xda-\xfe]")),
    ("PNG", re.compile(re.escape(b"\x89PNG\r\n\x1a\n"))),
    ("WebP", re.compile(rb"RIFF.{4}WEBPVP8", re.S)),
    ("GIF", re.compile(rb"GIF8[79]a")),
    ("HEIF/AVIF", re.compile(rb"ftyp(?:heic|heix|hevc|heim|heis|mif1|msf1|avif|avis)")),
    ("JPEG XL", re.compile(re.escape(b"\x00\x00\x00\x0cJXL \r\n\x87\n"))),
)
_HEX_SIGNATURES = (
    ("JPEG", re.compile(rb"ffd8ff[c-f][0-9a-f]", re.I)),
    ("PNG", re.compile(rb"89504e470d0a1a0a", re.I)),
)
# The shortest base64 that can hold a signature checked here (12 bytes), with slack.
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/\-_=\s]{16,}")
_NOT_BASE64 = re.compile(rb"[\s]")
_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def find_pictures(blob: bytes | bytearray | memoryview) -> list[str]:
    """What pictures `blob` holds, each as "a JPEG", "base64 of a PNG", ...; empty when none."""
    blob = bytes(blob)
    found = [f"a {name} file" for name, pattern in _SIGNATURES if pattern.search(blob)]
    found += [f"hex text of a {name} file" for name, pattern in _HEX_SIGNATURES
              if pattern.search(blob)]  # fmt: skip
    for run in _BASE64_RUN.finditer(blob):
        for piece in _NOT_BASE64.sub(b"", run.group()).translate(_URL_SAFE).split(b"="):
            for name in _decoded_signatures(piece):
                text = f"base64 text of a {name} file"
                if text not in found:
                    found.append(text)
    return found


def _decoded_signatures(text: bytes) -> list[str]:
    names: list[str] = []
    for shift in range(4):
        usable = text[shift:]
        usable = usable[: len(usable) - len(usable) % 4]
        if len(usable) < 16:
            break
        try:
            decoded = binascii.a2b_base64(usable, strict_mode=False)
        except binascii.Error:
            continue
        names += [name for name, pattern in _SIGNATURES if pattern.search(decoded)]
    return names
