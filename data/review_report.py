"""report.html of the review stage: one self-contained page a person reads to check the thresholds.

The page knows nothing about the rules: review hands it sections (title, count, rule in words,
items already ordered) and the thumbnails as JPEG bytes, embedded here as base64 data URIs so
the file can be mailed or opened offline. Every piece of text is escaped. Each figure names the
images it shows (data.report_figures), so that erasure can take one image's thumbnails out.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from data.report_figures import figure


@dataclass(frozen=True)
class Tile:
    """One thumbnail and what to write under it."""

    image: str  # key into the thumbnails mapping (the image's sha256)
    caption: str
    title: str = ""  # hover text, e.g. the image's path
    label: str = ""  # e.g. "kept" / "rejected" above the two images of a pair


@dataclass(frozen=True)
class Section:
    """A part of the report: a rejection reason, or the kept images near a threshold."""

    anchor: str
    title: str
    count: int
    rule: str
    # Each item is one image, or images side by side (a near-duplicate beside the kept one).
    items: Sequence[tuple[Tile, ...]] = field(default_factory=list)
    note: str = ""


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin: 1.6em 0 .2em; }
table.summary { border-collapse: collapse; }
table.summary td, table.summary th { padding: .2em .8em; border-bottom: 1px solid #ddd; }
table.summary td.n { text-align: right; }
.rule { color: #444; margin: .1em 0; } .note { color: #777; margin: .1em 0 .6em; }
.count { background: #eee; border-radius: 1em; padding: 0 .6em; font-weight: normal; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; padding: 4px; border: 1px solid #ddd; border-radius: 4px; }
.pair { display: flex; gap: 4px; }
.tile { width: 160px; }
.tile img { display: block; max-width: 160px; max-height: 160px; }
.label { font-size: 11px; color: #666; display: block; }
.missing { width: 160px; height: 90px; background: #f4f4f4; color: #999; display: flex;
  align-items: center; justify-content: center; font-size: 12px; }
.caption { font-size: 12px; word-break: break-all; }
"""


def render_report(
    *,
    title: str,
    intro: str,
    overview: Sequence[tuple[str, str, str]],
    sections: Sequence[Section],
    thumbnails: Mapping[str, bytes | None],
) -> str:
    """The whole page. `overview` rows are (name, count, rule), linked to the section whose
    anchor is that name; a thumbnail that is missing (None) shows as an empty box."""
    e = _escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{e(intro)}</p>",
        '<table class="summary"><tr><th>reason</th><th>images</th><th>rule</th></tr>',
    ]
    anchors = {s.anchor for s in sections}
    for name, count, rule in overview:
        label = f'<a href="#{e(name)}">{e(name)}</a>' if name in anchors else e(name)
        parts.append(f'<tr><td>{label}</td><td class="n">{e(count)}</td><td>{e(rule)}</td></tr>')
    parts.append("</table>")
    for section in sections:
        parts.append(_section(section, thumbnails))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _section(section: Section, thumbnails: Mapping[str, bytes | None]) -> str:
    e = _escape
    out = [
        f'<section id="{e(section.anchor)}">',
        f'<h2>{e(section.title)} <span class="count">{section.count}</span></h2>',
        f'<p class="rule">{e(section.rule)}</p>',
    ]
    if section.note:
        out.append(f'<p class="note">{e(section.note)}</p>')
    if section.items:
        out.append('<div class="grid">')
        for item in section.items:
            tiles = "".join(_tile(t, thumbnails.get(t.image)) for t in item)
            out.append(figure(f'<div class="pair">{tiles}</div>', (t.image for t in item)))
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _tile(tile: Tile, jpeg: bytes | None) -> str:
    e = _escape
    label = f'<span class="label">{e(tile.label)}</span>' if tile.label else ""
    if jpeg:
        data = base64.b64encode(jpeg).decode("ascii")
        picture = (
            f'<img src="data:image/jpeg;base64,{data}" alt="{e(tile.caption)}" '
            f'title="{e(tile.title)}">'
        )
    else:
        picture = f'<div class="missing" title="{e(tile.title)}">no preview</div>'
    caption = f'<div class="caption" title="{e(tile.title)}">{e(tile.caption)}</div>'
    return f'<div class="tile">{label}{picture}{caption}</div>'


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)
