"""Draw docs/figures/head_geometry.png: the head region the runtime hides for a keypoint model's
person, in four cases (frontal, seen from behind, tiny and distant, no visible keypoint).

Every box and region is computed by the runtime's own code, not drawn by hand: the head box by
`serving.runtime.heads.head_boxes` with the head geometry of conf/anonymizer/default.yaml, the
hidden region by `serving.runtime.anonymize.region` with the face style of
conf/export/default.yaml (heads are hidden as faces are). Run from the repository root:

    .venv/bin/python docs/figures/head_geometry.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import yaml
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from serving.runtime.anonymize import Style, region
from serving.runtime.detections import Detections
from serving.runtime.heads import HEAD_KEYPOINTS, HeadSpec, head_boxes

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_suffix(".png")
SEEN, UNSEEN = 5.0, -5.0  # keypoint scores either side of the default threshold (1.0)
HIDDEN = np.array([0.84, 0.19, 0.15])  # fully hidden
FEATHER = np.array([0.98, 0.62, 0.25])  # the soft edge


@dataclass(frozen=True)
class Case:
    """One person: its box, its head keypoints (name -> x, y, visible) and the canvas shown."""

    title: str
    box: tuple[float, float, float, float]
    keypoints: dict[str, tuple[float, float, bool]]
    canvas: tuple[int, int]  # width, height in pixels


# A standing person 300 px tall: a head about 36 px wide, its top at the top of the box.
PERSON = (65.0, 30.0, 155.0, 330.0)
FACE = {
    "nose": (110.0, 58.0),
    "left_eye": (104.0, 50.0),
    "right_eye": (116.0, 50.0),
    "left_ear": (96.5, 53.0),
    "right_ear": (123.5, 53.0),
}


def seen(names: tuple[str, ...]) -> dict[str, tuple[float, float, bool]]:
    return {k: (*xy, k in names) for k, xy in FACE.items()}


CASES = (
    Case("frontal: eyes, nose and ears", PERSON, seen(HEAD_KEYPOINTS), (220, 200)),
    Case("seen from behind: ears only", PERSON, seen(("left_ear", "right_ear")), (220, 200)),
    Case(
        "tiny and distant: min_px",
        (16.0, 10.0, 20.0, 26.0),
        {
            "nose": (18.0, 12.5, True),
            "left_eye": (17.6, 11.8, True),
            "right_eye": (18.4, 11.8, True),
            "left_ear": (17.0, 12.0, False),
            "right_ear": (19.0, 12.0, False),
        },
        (36, 33),
    ),
    Case("no visible keypoint: top of the box", PERSON, seen(()), (220, 200)),
)


def configured() -> tuple[HeadSpec, Style]:
    """The head geometry (conf/anonymizer) and the face style heads are hidden in (conf/export)."""
    anonymizer = yaml.safe_load((REPO / "conf/anonymizer/default.yaml").read_text("utf-8"))
    export = yaml.safe_load((REPO / "conf/export/default.yaml").read_text("utf-8"))
    heads = {k: v for k, v in anonymizer["heads"].items() if k != "enabled"}
    return HeadSpec.from_dict(heads), Style.from_dict(export["styles"]["face"])


def keypoint_array(case: Case) -> np.ndarray:
    """(1, K, 3) in HEAD_KEYPOINTS order."""
    rows = []
    for name in HEAD_KEYPOINTS:
        x, y, seen = case.keypoints[name]
        rows.append((x, y, SEEN if seen else UNSEEN))
    return np.array([rows], np.float32)


def draw(ax: plt.Axes, case: Case, spec: HeadSpec, style: Style) -> None:
    width, height = case.canvas
    kps = keypoint_array(case)
    head = head_boxes(np.array([case.box]), kps, spec, spec.indices(HEAD_KEYPOINTS))[0]
    dets = Detections(head[None], [1.0], [1])
    found = region(dets, 0, style, width, height)
    alpha = np.zeros((height, width), np.float32)
    if found is not None:
        alpha[found.y0 : found.y1, found.columns] = found.alpha
    rgba = np.zeros((height, width, 4))
    rgba[alpha >= 1, :3] = HIDDEN
    rgba[alpha >= 1, 3] = 0.75
    soft = (alpha > 0) & (alpha < 1)
    rgba[soft, :3] = FEATHER
    rgba[soft, 3] = 0.75 * alpha[soft]
    ax.set_facecolor("#f4f4f4")
    ax.imshow(rgba, extent=(0, width, height, 0), interpolation="nearest")
    x0, y0, x1, y1 = case.box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="#1f4e9c"))
    hx0, hy0, hx1, hy1 = head.tolist()
    ax.add_patch(
        Rectangle((hx0, hy0), hx1 - hx0, hy1 - hy0, fill=False, lw=1.5, ls="--", ec="black")
    )
    shown = kps[0][:, 2] >= spec.keypoint_threshold
    ax.scatter(kps[0][shown, 0], kps[0][shown, 1], s=22, c="black", zorder=3)
    ax.scatter(kps[0][~shown, 0], kps[0][~shown, 1], s=22, marker="x", c="#777777", zorder=3)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    w, h = hx1 - hx0, hy1 - hy0
    ax.set_title(f"{case.title}\nhead box {round(w, 1):g} x {round(h, 1):g} px", fontsize=9)
    ax.tick_params(labelsize=7)


def main() -> None:
    spec, style = configured()
    fig, axes = plt.subplots(1, len(CASES), figsize=(13, 4.2))
    for ax, case in zip(axes, CASES, strict=True):
        draw(ax, case, spec, style)
    legend = [
        Line2D([], [], color="#1f4e9c", lw=1.5, label="person box"),
        Line2D([], [], color="black", marker="o", ls="", ms=5, label="visible head keypoint"),
        Line2D([], [], color="#777777", marker="x", ls="", ms=5, label="head keypoint not visible"),
        Line2D([], [], color="black", lw=1.5, ls="--", label="head box (head_boxes)"),
        Patch(color=HIDDEN, alpha=0.75, label="hidden fully"),
        Patch(color=FEATHER, alpha=0.5, label="feathered edge"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(
        f"Head regions from keypoints (spread {spec.spread:g}, box_share {spec.box_share:g}, "
        f"aspect {spec.aspect:g}, min_px {spec.min_px:g}; face style margin {style.margin:g}, "
        f"feather {style.feather:g})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
