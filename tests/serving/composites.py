"""A composite artifact for the runtime's tests, written as export writes one
(`CompositeManifest.to_json`, `headed_json`, its members copied under members/), from the tiny
exported Mask R-CNN (`tests.serving.artifacts`) and a copy of it relabelled as a Keypoint R-CNN of
persons. Loading reads only that member's manifest; where it runs, a stand-in detector (`poser`,
installed by `stand_in`) finds one person seen from behind, whose ears are its visible head
keypoints (the ONNX graph of a keypoint model would cost a second export)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from serving.runtime import pipeline
from serving.runtime.artifact import load_artifact
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import (
    COMPOSITE,
    MEMBERS,
    CompositeManifest,
    Member,
    default_supplies,
)
from serving.runtime.detections import Detections
from serving.runtime.heads import HEAD, HEAD_KEYPOINTS, HeadSpec, head_boxes
from serving.runtime.release import Gate, headed_json, release_notice, release_problems
from tests.serving.artifacts import RELEASE_GATE, edit_manifest

HEAD_THRESHOLD = 0.5
# The stand-in keypoint model's one person, in a 120 x 110 image (one tiling window, so window
# and image coordinates agree), seen from behind: both ears visible, nose and eyes not.
WIDTH, HEIGHT = 120, 110
PERSON_BOX = (20.0, 10.0, 80.0, 110.0)
EARS = {"left_ear": (40.0, 30.0), "right_ear": (60.0, 30.0)}
# The back of that head, where a face the face class cannot see is.
BACK_OF_HEAD = (38, 18, 62, 44)


def keypoint_member(source: Path, into: Path) -> Path:
    """A copy of the tiny artifact `source` made a Keypoint R-CNN of persons named tinykp: the
    manifest is a keypoint model's (its manifest_sha256 recomputed), the network is not one."""
    folder = into / "tinykp-1"
    shutil.copytree(source, folder)

    def relabel(m: dict) -> None:
        m["name"] = "tinykp"
        m["architecture"] = {
            **m["architecture"],
            "kind": "keypointrcnn",
            "classes": ["person"],
            "keypoint_names": list(HEAD_KEYPOINTS),
        }
        m["classes"] = ["person"]
        m["thresholds"] = {"person": m["thresholds"]["person"]}
        m["styles"] = {"person": m["styles"]["person"]}
        m["recall"] = {}

    edit_manifest(folder, relabel)
    return folder


def write_composite(
    root: Path, members: Sequence[Path], *, heads: bool = True, gate: Gate = RELEASE_GATE
) -> Path:
    """An anonymizer folder root/anonymizer-1 of copies of the artifact folders `members`, as
    export writes one: each class from the member `default_supplies` names at that member's
    threshold and style, heads (when `heads`) at HEAD_THRESHOLD in the face's style."""
    folder = root / "anonymizer-1"
    loaded = []
    for source in members:
        shutil.copytree(source, folder / MEMBERS / source.name)
        loaded.append(load_artifact(folder / MEMBERS / source.name))
    described = [
        Member(
            a.manifest.name,
            tuple(a.manifest.classes),
            a.manifest.kind,
            tuple(a.manifest.architecture.get("keypoint_names") or ()),
        )
        for a in loaded
    ]
    supplies = default_supplies(described, heads=heads)
    by_name = {a.manifest.name: a.manifest for a in loaded}
    thresholds = {c: by_name[n].thresholds[c] for c, n in supplies.items() if c != HEAD}
    styles = {c: by_name[n].styles[c] for c, n in supplies.items() if c != HEAD}
    if HEAD in supplies:
        thresholds[HEAD] = HEAD_THRESHOLD
        styles[HEAD] = styles["face"]
    (folder / "MODEL_CARD.md").write_text("# anonymizer 1\n", encoding="utf-8")
    # The gate as export has it, read from validate's verdict.json (keys sorted): the notice
    # lists the targets in that order, and load_composite recomputes it from the sorted JSON.
    gate = Gate.from_dict(json.loads(json.dumps(gate.to_dict(), sort_keys=True)))
    manifest = CompositeManifest(
        name="anonymizer",
        version="1",
        members=[
            {
                "folder": f"{MEMBERS}/{source.name}",
                "name": a.manifest.name,
                "version": a.manifest.version,
                "manifest_sha256": a.manifest_sha256,
            }
            for source, a in zip(members, loaded, strict=True)
        ],
        supplies=supplies,
        thresholds=thresholds,
        styles=styles,
        heads=HeadSpec().to_dict() if heads else {},
        gate=gate.to_dict(),
        notice=release_notice(release_problems(gate)),
        files={"MODEL_CARD.md": file_sha256(folder / "MODEL_CARD.md")},
    )
    (folder / COMPOSITE).write_text(headed_json(manifest.to_json(), "notice"), encoding="utf-8")
    return folder


def read_composite(folder: Path) -> dict:
    return json.loads((folder / COMPOSITE).read_text(encoding="utf-8"))


def rewrite_composite(folder: Path, raw: dict) -> None:
    (folder / COMPOSITE).write_text(json.dumps(raw), encoding="utf-8")


def poser(tiles: list[np.ndarray]) -> list[Detections]:
    """The keypoint member's stand-in: in a window of WIDTH x HEIGHT (the whole of such an
    image), one person (score 0.9) at PERSON_BOX whose ears are visible and the rest of its
    head not; nothing in other windows (a service's warm-up image)."""
    kps = np.array(
        [[*EARS.get(name, (5.0, 5.0)), 5.0 if name in EARS else -5.0] for name in HEAD_KEYPOINTS]
    )
    person = Detections([PERSON_BOX], [0.9], [1], keypoints=kps[None])
    nobody = Detections(np.zeros((0, 4)), [], [], keypoints=np.zeros((0, len(HEAD_KEYPOINTS), 3)))
    return [person if t.shape[:2] == (HEIGHT, WIDTH) else nobody for t in tiles]


def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the runtime run `poser` for keypoint members, and their real ONNX graph for the
    others."""
    real = pipeline.OnnxDetector

    def detector(path: Path, *, kind: str, **options):  # type: ignore[no-untyped-def]
        return poser if kind == "keypointrcnn" else real(path, kind=kind, **options)

    monkeypatch.setattr(pipeline, "OnnxDetector", detector)


def image_with_a_face_from_behind() -> np.ndarray:
    """A grey WIDTH x HEIGHT image with a black-and-white checkerboard at BACK_OF_HEAD (any blur
    changes each of its pixels)."""
    image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    x0, y0, x1, y1 = BACK_OF_HEAD
    yy, xx = np.mgrid[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = (((yy + xx) % 2) * 255).astype(np.uint8)[..., None]
    return image


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def decoded(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def expected_head(anonymizer: Path) -> list[float]:
    """The head box of the stand-in's person by the anonymizer's head geometry."""
    spec = HeadSpec.from_dict(read_composite(anonymizer)["heads"])
    kps = poser([np.zeros((HEIGHT, WIDTH, 3), np.uint8)])[0].keypoints
    box = head_boxes(np.array([PERSON_BOX]), kps, spec, spec.indices(HEAD_KEYPOINTS))[0]
    return [round(float(v), 1) for v in box]
