"""report.html of the evaluate stage: first the anonymizer (the models run as one, what the gate
judges) beside each member, with the faces only its heads caught; then the peer baselines
(independent detectors, `evaluation.peers`); then per model recall per class and size with
intervals (by mask IoU, or box IoU where there are no masks, and by coverage), false
positives per image, the plots, the champion beside the new model, and a gallery of the
objects each model misses ("N of M missed" per class), each crop captioned with its image's
file and session and showing the model's own detections there. Each peer's rows stand next to
ours in every recall table, for the classes it finds, marked as a peer.

One self-contained page (plots and crops embedded as data URIs) a person reads to see what a
model misses before it is released. It takes the scorer's results (`ScoreResult`) and
crops as JPEG bytes; every piece of text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from data.report_figures import figure
from data.size_buckets import BUCKETS
from evaluation.scoring.result import RecallCell, ScoreResult
from serving.runtime.release import target_problems

# `below_identifiable`: objects too small to identify anyone (score.py), not judged.
BUCKET_ORDER = [*BUCKETS, "all", "below_identifiable"]


@dataclass(frozen=True)
class Miss:
    """One ground-truth object a model did not anonymize: a crop with context, box drawn."""

    jpeg: bytes
    caption: str
    image: str = ""  # the sha256 of the image it was cut from, which marks its figure


@dataclass(frozen=True)
class SetReport:
    name: str
    metrics: ScoreResult  # the model's on this set
    champion: ScoreResult | None = None  # the champion's, when there is one
    misses: Sequence[Miss] = field(default_factory=list)  # the crops shown
    # class -> (objects missed, objects counted) on this set
    missed: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def missed_total(self) -> int:
        return sum(m for m, _ in self.missed.values())

    @property
    def counted_total(self) -> int:
        return sum(n for _, n in self.missed.values())


@dataclass(frozen=True)
class ModelReport:
    name: str
    version: str | None  # registered version of the evaluated weights
    champion_version: str | None
    # class -> {threshold, val_recall, reached}
    thresholds: Mapping[str, Mapping[str, Any]]
    sets: Sequence[SetReport]


@dataclass(frozen=True)
class AnonymizerSetReport:
    """The anonymizer on one reference set: its scores, each member's (model name -> its
    scores), and the faces only its heads cover (crops, and how many there are)."""

    name: str
    metrics: ScoreResult
    members: Mapping[str, ScoreResult]
    heads_only: Sequence[Miss] = field(default_factory=list)
    heads_only_total: int = 0


@dataclass(frozen=True)
class AnonymizerReport:
    name: str
    supplies: Mapping[str, str]  # class -> model (`head` included)
    # class -> {threshold, val_recall, reached, model} (`head` included)
    thresholds: Mapping[str, Mapping[str, Any]]
    sets: Sequence[AnonymizerSetReport]


@dataclass(frozen=True)
class PeerReport:
    """A peer baseline: its name, licence and origin, thresholds chosen on val (class ->
    {threshold, val_recall, reached}) and its scores per set."""

    name: str
    licence: str
    thresholds: Mapping[str, Mapping[str, Any]]
    scores: Mapping[str, ScoreResult]


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .4em 0 1em; }
td, th { padding: .2em .6em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.low { background: #fde2e2; } td.ok { background: #e3f6e3; }
.ci { color: #777; font-size: 11px; } .delta { font-size: 11px; }
.worse { color: #b00; } .better { color: #070; }
.notice { background: #fde2e2; border: 1px solid #b00; padding: 6px; }
.note { color: #555; } .plots img { max-width: 560px; margin-right: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; padding: 3px; border: 1px solid #ddd; border-radius: 4px; width: 248px; }
figure img { display: block; max-width: 240px; max-height: 240px; }
figcaption { font-size: 11px; overflow-wrap: anywhere; }
"""


def render_report(
    models: Sequence[ModelReport],
    *,
    targets: Mapping[str, float],
    coverage: float,
    identifiable: Mapping[str, float],
    generated: str,
    anonymizer: AnonymizerReport | None = None,
    peers: Sequence[PeerReport] = (),
) -> str:
    """The whole page as a string, the anonymizer's section first. Under targets or a coverage
    share weaker than the release gate's (`release.target_problems`), its first line is an HTML
    comment saying NOT A RELEASE and why, and a banner says so above everything else."""
    problems = target_problems(targets, coverage)
    banner = (
        f"<p class='notice'><b>NOT A RELEASE</b>: evaluated against {_e('; '.join(problems))}</p>"
        if problems
        else ""
    )
    parts = [
        f"<!-- {_e(_notice(problems))} -->",
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>anonlab evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        banner,
        "<h1>Anonymization recall</h1>",
        "<p class='note'>A missed face or plate is a legal incident, an extra blur a cosmetic "
        "one: models are judged by recall. <b>mask IoU</b> (<b>box IoU</b> where the ground "
        "truth or the detections have no masks): share of objects found by a detection of "
        "their class at the operating threshold whose mask (box) overlaps theirs by IoU &ge; "
        "0.5. <b>coverage</b>: share of objects whose pixels are at least "
        f"{coverage:.0%} covered by the detections of any class (what the blur hides). "
        "<b>FP / image</b>: detections of the class at the operating threshold that match no "
        "object, per image of the set. Brackets: bootstrap 95% intervals over images. "
        f"Targets: {_e(', '.join(f'{c} {t:.2f}' for c, t in targets.items()))}, for "
        f"identifiable objects ({_e(_identifiable(identifiable))}); smaller ones are in "
        "<b>below identifiable</b>, not judged, and hiding them is no false positive. "
        f"Generated {_e(generated)}.</p>",
    ]
    if anonymizer is not None:
        parts.append(_anonymizer(anonymizer, targets, coverage, peers))
    if peers:
        parts.append(_peers(peers))
    for model in models:
        parts.append(_model(model, targets, peers))
    parts.append("</body></html>")
    return "\n".join(parts)


def _anonymizer(
    a: AnonymizerReport,
    targets: Mapping[str, float],
    coverage: float,
    peers: Sequence[PeerReport],
) -> str:
    head = a.thresholds.get("head")
    if head is not None:
        reached = (
            "" if head.get("reached") else " <span class='worse'>face target not reached</span>"
        )
        heads = (
            f"Heads: a region around the head of each person {_e(head.get('model'))} finds "
            f"scoring at least <b>{_num(head.get('threshold'))}</b>, hidden as a face is "
            f"(chosen on val for the face target: face coverage recall there "
            f"{_num(head.get('val_recall'))}{reached})."
        )
    else:
        heads = "No heads: no keypoint model among the members, or anonymizer.heads.enabled false."
    supplies = ", ".join(f"{c} from {m}" for c, m in a.supplies.items() if c != "head")
    out = [
        f"<h2 id='anonymizer'>Anonymizer {_e(a.name)}: the models run as one</h2>",
        "<p class='note'>What ships and what the release gate judges: each class from the model "
        f"that supplies it ({_e(supplies)}) at that model's operating threshold, evaluated as "
        "the runtime runs it. Its <b>coverage</b> is the share of objects with at least "
        f"{coverage:.0%} of their pixels among those the runtime hides fully (the regions of "
        "every class and of the heads, in their styles, the soft edge left out); its "
        "<b>iou</b> comes from its detections of each class. The members' own numbers are "
        f"shown beside it, not gated. {heads}</p>",
    ]
    for s in a.sets:
        out.append(_anonymizer_set(a, s, targets, peers))
    return "\n".join(out)


def _anonymizer_set(
    a: AnonymizerReport,
    s: AnonymizerSetReport,
    targets: Mapping[str, float],
    peers: Sequence[PeerReport],
) -> str:
    empty = RecallCell(n=0)
    rows = []
    for name in s.metrics.recall:
        who = [(m, r) for m, r in s.members.items() if name in r.recall]
        who.append(("anonymizer", s.metrics))
        who += [(f"peer {p}", r) for p, r in _peer_scores(peers, s.name, name)]
        for label, result in who:
            cell = result.recall[name].get("all", empty)
            cells = [f"<td>{iou_name(result).split()[0]}</td>"]
            for metric in ("iou", "coverage"):
                value = cell.value(metric)
                low = label == "anonymizer" and _below(value, targets.get(name))
                ok = label == "anonymizer" and cell.n and not low
                css = "low" if low else ("ok" if ok else "")
                cells.append(f"<td class='{css}'>{_num(value)}{_ci(cell.interval(metric))}</td>")
            cells.append(f"<td>{_num(result.false_positives_per_image.get(name))}</td>")
            who_label = f"<b>{_e(label)}</b>" if label == "anonymizer" else _e(label)
            supplier = " (supplies it)" if a.supplies.get(name) == label else ""
            rows.append(
                f"<tr><td>{_e(name)}</td><td>{who_label}{_e(supplier)}</td>"
                f"<td>{cell.n}</td>{''.join(cells)}</tr>"
            )
    gallery = "\n".join(_figure(m) for m in s.heads_only)
    shown = (
        f"{len(s.heads_only)} of {s.heads_only_total} faces, smallest first"
        if s.heads_only_total
        else "none"
    )
    return "\n".join(
        [
            f"<h3>Anonymizer on {_e(s.name)}</h3>",
            "<table><tr><th>class</th><th>model</th><th>n</th><th>IoU of</th>"
            "<th>IoU recall (all sizes)</th><th>coverage (all sizes)</th><th>FP / image</th>"
            "</tr>",
            *rows,
            "</table>",
            f"<h3>Faces only the heads hid on {_e(s.name)}: {s.heads_only_total}</h3>",
            f"<p class='note'>Identifiable faces the anonymizer covers and would not cover "
            f"without its heads: {shown}.</p>",
            f"<div class='grid'>{gallery}</div>",
        ]
    )


def _peers(peers: Sequence[PeerReport]) -> str:
    """The peers: what each is, and its thresholds (chosen on val as our models' are)."""
    out = [
        "<h2 id='peers'>Peer baselines: independent detectors</h2>",
        "<p class='note'>Detectors anonlab did not train, scored on the same upright images "
        "(CenterFace cut into evaluate's windows) by the same scorer, for the classes they "
        "find; their rows stand next to ours in every table, marked <b>peer</b>. A peer's "
        "operating threshold is chosen on val as our models' are: per class the highest score "
        "whose IoU recall still reaches the target, never below evaluate.min_threshold. Peers "
        "are shown, never gated.</p>",
        "<table><tr><th>peer</th><th>licence and origin</th><th>class</th><th>threshold</th>"
        "<th>val recall (IoU)</th></tr>",
    ]
    for p in peers:
        kind = iou_name(next(iter(p.scores.values()))) if p.scores else "IoU"
        for name, t in p.thresholds.items():
            reached = "" if t.get("reached") else " <span class='worse'>target not reached</span>"
            out.append(
                f"<tr><td>{_e(p.name)}</td><td>{_e(p.licence)}</td><td>{_e(name)}</td>"
                f"<td>{_num(t.get('threshold'))}</td><td>{_num(t.get('val_recall'))}{reached} "
                f"<span class='ci'>{kind}</span></td></tr>"
            )
    out.append("</table>")
    return "\n".join(out)


def _peer_scores(
    peers: Sequence[PeerReport], set_name: str, name: str
) -> list[tuple[str, ScoreResult]]:
    """(peer name, its scores on `set_name`) of each peer scored on class `name` there."""
    scores = [(p.name, p.scores.get(set_name)) for p in peers]
    return [(p, r) for p, r in scores if r is not None and name in r.recall]


def _model(model: ModelReport, targets: Mapping[str, float], peers: Sequence[PeerReport]) -> str:
    version = f" (registered version {model.version})" if model.version else ""
    champion = (
        f"Champion: version {_e(model.champion_version)}, scored on the same sets."
        if model.champion_version
        else "No champion in the registry yet."
    )
    kind = iou_name(model.sets[0].metrics) if model.sets else "IoU"
    rows = []
    for name, t in model.thresholds.items():
        reached = "" if t.get("reached") else " <span class='worse'>target not reached</span>"
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_num(t.get('threshold'))}</td>"
            f"<td>{_num(t.get('val_recall'))}{reached}</td></tr>"
        )
    out = [
        f"<h2 id='{_e(model.name)}'>{_e(model.name)}{_e(version)}</h2>",
        f"<p class='note'>{champion}</p>",
        "<h3>Operating thresholds (chosen on val)</h3>",
        f"<table><tr><th>class</th><th>threshold</th><th>val recall ({kind})</th></tr>",
        *rows,
        "</table>",
    ]
    for s in model.sets:
        out.append(_set(model, s, targets, peers))
    return "\n".join(out)


def _set(
    model: ModelReport, s: SetReport, targets: Mapping[str, float], peers: Sequence[PeerReport]
) -> str:
    recall = s.metrics.recall
    old_recall = s.champion.recall if s.champion else {}
    empty = RecallCell(n=0)
    iou = iou_name(s.metrics)
    head = "".join(f"<th colspan='2'>{b.replace('_', ' ')}</th>" for b in BUCKET_ORDER)
    sub = "".join(f"<th>{iou}</th><th>coverage</th>" for _ in BUCKET_ORDER)
    rows = []
    for name, buckets in recall.items():
        cells = [f"<td>{_num(s.metrics.false_positives_per_image.get(name))}</td>"]
        for bucket in BUCKET_ORDER:
            cell = buckets.get(bucket, empty)
            old = old_recall.get(name, {}).get(bucket, empty)
            for metric in ("iou", "coverage"):
                value = cell.value(metric)
                low = bucket == "all" and _below(value, targets.get(name))
                cls = "low" if low else ("ok" if bucket == "all" and cell.n else "")
                cells.append(
                    f"<td class='{cls}'>{_num(value)}"
                    f"{_ci(cell.interval(metric))}{_delta(value, old.value(metric))}"
                    f"<br><span class='ci'>n={cell.n}</span></td>"
                )
        rows.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
        for peer, result in _peer_scores(peers, s.name, name):
            rows.append(_peer_row(peer, name, result, iou))
    coco = s.metrics.coco
    coco_line = " &middot; ".join(
        f"{kind} AP {_num((coco.get(kind) or {}).get('AP'))}" for kind in ("bbox", "segm")
    )
    plots = [_png(pr_figure(s.metrics, model.thresholds)), _png(size_figure(s.metrics, s.champion))]
    gallery = "\n".join(_figure(m) for m in s.misses)
    champ = " &Delta; against the champion under each value." if s.champion else ""
    return "\n".join(
        [
            f"<h3>{_e(model.name)} on {_e(s.name)}</h3>",
            f"<p class='note'>{coco_line}.{champ}</p>",
            f"<table><tr><th rowspan='2'>class</th><th rowspan='2'>FP / image</th>{head}</tr>"
            f"<tr>{sub}</tr>",
            *rows,
            "</table>",
            f"<div class='plots'>{''.join(plots)}</div>",
            f"<h3>Missed on {_e(s.name)}: {_missed_line(s)}</h3>",
            _gallery_note(s, model.thresholds),
            f"<div class='grid'>{gallery}</div>",
        ]
    )


def _missed_line(s: SetReport) -> str:
    """How many objects of the set were missed (not covered), of how many, per class."""
    if not s.counted_total:
        return "no objects"
    per_class = ", ".join(f"{_e(c)} {m} of {n}" for c, (m, n) in s.missed.items())
    return f"{s.missed_total} of {s.counted_total} objects missed ({per_class})"


def _gallery_note(s: SetReport, thresholds: Mapping[str, Mapping[str, Any]]) -> str:
    """What the gallery shows: which crops, and what is drawn in them."""
    if not s.missed_total:
        return "<p class='note'>Every object covered.</p>"
    at = ", ".join(f"{_e(c)} {_num(t.get('threshold'))}" for c, t in thresholds.items())
    return (
        f"<p class='note'>Missed: not covered by the coverage rule above. Showing "
        f"{len(s.misses)} of {s.missed_total}, identifiable objects first, smallest first. "
        "Red: the missed object's box. Cyan: the model's own detections at its operating "
        f"thresholds ({at}), each with its box, its score and its mask's outline where it has "
        "one; none drawn: the model found nothing there at those thresholds.</p>"
    )


def _peer_row(peer: str, name: str, result: ScoreResult, kind: str) -> str:
    """A peer's row of a model's table: class `name` by size bucket, marked as a peer; its IoU
    named when it is not the model's (`kind`)."""
    empty = RecallCell(n=0)
    buckets = result.recall[name]
    cells = [f"<td>{_num(result.false_positives_per_image.get(name))}</td>"]
    for bucket in BUCKET_ORDER:
        cell = buckets.get(bucket, empty)
        for metric in ("iou", "coverage"):
            cells.append(
                f"<td>{_num(cell.value(metric))}{_ci(cell.interval(metric))}"
                f"<br><span class='ci'>n={cell.n}</span></td>"
            )
    own = iou_name(result)
    note = f"peer {peer}" + (f", {own}" if own != kind else "")
    label = f"{_e(name)} <span class='note'>{_e(note)}</span>"
    return f"<tr class='peer'><td>{label}</td>{''.join(cells)}</tr>"


def pr_figure(metrics: ScoreResult, thresholds: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Precision against recall per class, the operating point marked; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4), dpi=90)
    try:
        for name, curve in metrics.pr_curve.items():
            if not curve:
                continue
            line = ax.plot([p.recall for p in curve], [p.precision for p in curve], label=name)
            threshold = (thresholds.get(name) or {}).get("threshold")
            if threshold is not None:
                # The point of the curve at the operating threshold (the last one at or above).
                above = [p for p in curve if p.score >= threshold]
                if above:
                    point = min(above, key=lambda p: p.score)
                    ax.plot(point.recall, point.precision, "o", color=line[0].get_color())
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.set_title(
            f"precision / recall ({iou_name(metrics)} 0.5); dot: operating threshold", fontsize=10
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        return _save(fig)
    finally:
        plt.close(fig)


def size_figure(metrics: ScoreResult, champion: ScoreResult | None) -> bytes:
    """Coverage recall per class and size bucket with 95% intervals (champion hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recall = metrics.recall
    empty = RecallCell(n=0)
    classes = list(recall)
    buckets = list(BUCKETS)
    fig, ax = plt.subplots(figsize=(5.6, 4), dpi=90)
    try:
        width = 0.8 / max(len(classes), 1)
        x = np.arange(len(buckets))
        for i, name in enumerate(classes):
            values, low, high = [], [], []
            for b in buckets:
                cell = recall[name].get(b, empty)
                v = cell.coverage
                ci = cell.coverage_ci or (v, v)
                values.append(np.nan if v is None else v)
                low.append(0 if v is None or ci[0] is None else v - ci[0])
                high.append(0 if v is None or ci[1] is None else ci[1] - v)
            bars = ax.bar(
                x + i * width, values, width, yerr=[low, high], capsize=2, label=name, alpha=0.85
            )
            if champion:
                old = [champion.recall.get(name, {}).get(b, empty).coverage for b in buckets]
                ax.bar(
                    x + i * width,
                    [np.nan if v is None else v for v in old],
                    width,
                    fill=False,
                    hatch="//",
                    edgecolor=bars.patches[0].get_facecolor(),
                )
        ax.set_xticks(x + 0.4 - width / 2, buckets)
        ax.set(ylabel="coverage recall", ylim=(0, 1.05))
        title = "recall by object size" + (" (hatched: champion)" if champion else "")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if classes:
            ax.legend(fontsize=8)
        return _save(fig)
    finally:
        plt.close(fig)


def iou_name(result: ScoreResult) -> str:
    """How `result` matched detections to objects: "mask IoU" or "box IoU" (`score` uses masks
    when the ground truth and the detections both have them)."""
    return "mask IoU" if result.iou_type == "segm" else "box IoU"


def _save(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _png(data: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _below(value: float | None, target: float | None) -> bool:
    return value is not None and target is not None and value < target


def _num(value: Any) -> str:
    return "&ndash;" if value is None else f"{value:.3f}"


def _ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" <span class='ci'>[{ci[0]:.2f}, {ci[1]:.2f}]</span>"


def _delta(new: float | None, old: float | None) -> str:
    if new is None or old is None:
        return ""
    d = new - old
    cls = "worse" if d < 0 else "better" if d > 0 else ""
    return f" <span class='delta {cls}'>&Delta;{d:+.3f}</span>"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _notice(problems: Sequence[str]) -> str:
    if problems:
        return "NOT A RELEASE: evaluated against " + "; ".join(problems)
    return "evaluated against the release gate's targets"


def _identifiable(minimum: Mapping[str, float]) -> str:
    heights = [f"{c} from {h:g} px tall" for c, h in minimum.items() if h > 0]
    return "; ".join(heights) + ("; " if heights else "") + "every object of other classes"


def _figure(m: Miss) -> str:
    """A crop as a figure marked with its image (data.report_figures), one per line."""
    img = f"<img src='data:image/jpeg;base64,{base64.b64encode(m.jpeg).decode()}'>"
    return figure(f"{img}<figcaption>{_e(m.caption)}</figcaption>", [m.image] if m.image else [])
