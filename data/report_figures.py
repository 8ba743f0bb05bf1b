"""Figures of an image's pixels in an HTML report, marked so that erasure can take them out.

Every figure a report draws from an image (a review thumbnail, a crop in evaluate's gallery) is
written by `figure` on one line as `<figure data-images="<sha256> ...">...</figure>`, naming the
images it shows. `redact` removes exactly the figures that show an erased image; the rest of the
report stays as it was. A report holding a `<figure>` without the mark was written before
figures were marked: `unmarked` counts them, and erasure deletes such a report whole (its stage
writes it again).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_MARKED = re.compile(r'<figure data-images="([0-9a-f ]*)">.*?</figure>\n?')
_ANY = re.compile(r"<figure[ >]")


def figure(inner: str, images: Iterable[str]) -> str:
    """`inner` as one marked figure on one line (newlines inside become spaces)."""
    names = " ".join(sorted(set(images)))
    if not re.fullmatch(r"[0-9a-f ]*", names):
        raise ValueError(f"figure images must be sha256 hex digests, got {names!r}")
    return f'<figure data-images="{html.escape(names)}">{inner.replace(chr(10), " ")}</figure>'


def redact(text: str, shas: Iterable[str]) -> tuple[str, int]:
    """`text` without the marked figures that show one of `shas`, and how many were removed."""
    wanted = set(shas)
    removed = 0

    def drop(m: re.Match[str]) -> str:
        nonlocal removed
        if wanted & set(m.group(1).split()):
            removed += 1
            return ""
        return m.group(0)

    return _MARKED.sub(drop, text), removed


def unmarked(text: str) -> int:
    """How many figures of `text` carry no mark (a report written before marking)."""
    return len(_ANY.findall(text)) - len(_MARKED.findall(text))
