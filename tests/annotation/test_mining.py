"""Mining misses: push queues first the images where CenterFace finds a face that the
pre-annotation does not cover, on real photographs in the session's Label Studio, and says why in
each task's `meta`; the coverage rule and the order/score mapping on hand-made values."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import requests
import skimage.data
from PIL import Image

from annotation.client import connect
from annotation.mining import covered_share, face_boxes, queue_order, queue_score
from annotation.push import image_url, run_push
from data.errors import AnonlabError
from data.manifest import ManifestRecord
from serving.cli import main as cli_main
from tests.annotation.conftest import LabelStudioUnderTest
from tests.annotation.server_project import TAXONOMY, annotation_cfg, review
from tests.images import jpeg_bytes, store_jpeg, texture

WIDTH = 256  # photos reduced: CenterFace and the cascades still find their faces, quickly


def _reduced(rgb: np.ndarray) -> np.ndarray:
    height = round(rgb.shape[0] * WIDTH / rgb.shape[1])
    return cv2.resize(rgb, (WIDTH, height), interpolation=cv2.INTER_AREA)


def photos() -> dict[str, np.ndarray]:
    """Public-domain photographs shipped by installed packages, and one image without people.

    The cascades find the astronaut's and Grace Hopper's faces; they find neither the
    cameraman's (turned away, in shadow) nor the astronaut's turned a quarter: CenterFace finds
    all four."""
    astronaut = _reduced(skimage.data.astronaut())
    cameraman = _reduced(np.repeat(skimage.data.camera()[:, :, None], 3, axis=2))
    turned = np.ascontiguousarray(np.rot90(astronaut))
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {
        "street": texture(WIDTH, 192, 3),
        "astronaut": astronaut,
        "cameraman": cameraman,
        "grace_hopper": _reduced(np.asarray(Image.open(grace).convert("RGB"))),
        "two_missed": np.hstack([cameraman, turned]),
        "turned": turned,
    }


def store(artifacts: Path, images: dict[str, np.ndarray]) -> dict[str, ManifestRecord]:
    return {
        name: store_jpeg(
            artifacts,
            jpeg_bytes(rgb, quality=95),
            width=rgb.shape[1],
            height=rgb.shape[0],
            source_path=f"/photos/{name}.jpg",
            session="photos",
        )
        for name, rgb in images.items()
    }


def pushed(ls: LabelStudioUnderTest, title: str, records: dict[str, ManifestRecord]) -> list:
    """(name, meta, prediction score) of the project's tasks, in import order."""
    client = connect(annotation_cfg(ls.url, title))
    names = {image_url(r): name for name, r in records.items()}
    tasks = sorted(client.export_tasks(client.require_project(title)), key=lambda t: t["id"])
    out = []
    for task in tasks:
        [prediction] = requests.get(
            f"{ls.url}/api/predictions",
            params={"task": task["id"]},
            headers={"Authorization": f"Token {ls.token}"},
            timeout=10,
        ).json()
        out.append((names[task["data"]["image"]], task["meta"], prediction["score"]))
    return out


def test_push_queues_images_with_missed_faces_first_and_says_why(
    ls: LabelStudioUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    records = store(ls.artifacts, photos())
    review(ls.artifacts, list(records.values()))

    report = run_push(annotation_cfg(ls.url, "push-mining"), TAXONOMY, ls.artifacts)
    print(report.summary())
    tasks = pushed(ls, "push-mining", records)
    order = [name for name, _, _ in tasks]
    # More missed faces first; equal counts (and equal uncertainty) keep the manifest's order.
    assert order[:3] == ["two_missed", "cameraman", "turned"], tasks
    assert set(order[3:]) == {"street", "astronaut", "grace_hopper"}
    metas = {name: meta for name, meta, _ in tasks}
    for name, n in (("two_missed", 2), ("cameraman", 1), ("turned", 1)):
        meta = metas[name]
        assert (meta["queued"], meta["missed_faces"], meta["second_opinion"]) == (
            "missed faces",
            n,
            "centerface",
        )
        assert len(meta["missed_boxes"]) == n
        assert meta["missed_score"] == max(b["score"] for b in meta["missed_boxes"]) >= 0.5
    # The cameraman's face, in percent of the photo: about x 39..50 %, y 23..38 %.
    [box] = metas["cameraman"]["missed_boxes"]
    assert abs(box["x"] + box["width"] / 2 - 45) < 6 and abs(box["y"] + box["height"] / 2 - 30) < 6
    for name in ("street", "astronaut", "grace_hopper"):
        meta = metas[name]
        assert (meta["queued"], meta["missed_faces"], meta["second_opinion"]) == (
            "uncertain",
            0,
            "centerface",
        )
        assert "missed_boxes" not in meta
    rest = [metas[name]["uncertainty"] for name in order[3:]]
    assert rest == sorted(rest, reverse=True)
    # Label Studio's uncertainty sampling (lowest score first) follows the import order.
    scores = [score for _, _, score in tasks]
    assert scores == sorted(scores)
    assert all(score < 0.5 for score in scores[:3]) and all(score >= 0.5 for score in scores[3:])
    for _, meta, score in tasks:
        assert score == pytest.approx(
            queue_score(meta["uncertainty"], meta["missed_faces"]), abs=1e-3
        )
    assert report.missed_faces == [2, 1, 1, 0, 0, 0]
    out = capsys.readouterr().out
    assert "queued first: 3 images with 4 faces that centerface finds" in out
    assert "then 3 images, most uncertain first" in out

    # Turned off: the order is the uncertainty's alone, and the meta says so.
    off = run_push(
        annotation_cfg(ls.url, "push-no-opinion", second_opinion="none"), TAXONOMY, ls.artifacts
    )
    assert off.second_opinion is None and off.missed_faces == [0] * 6
    tasks = pushed(ls, "push-no-opinion", records)
    assert {meta["queued"] for _, meta, _ in tasks} == {"uncertain"}
    assert not any("second_opinion" in meta for _, meta, _ in tasks)
    uncertainty = [meta["uncertainty"] for _, meta, _ in tasks]
    assert uncertainty == sorted(uncertainty, reverse=True)


def test_a_detector_that_cannot_load_stops_push_before_the_server_is_touched(
    ls: LabelStudioUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = tmp_path / "centerface.onnx"
    wrong.write_bytes(b"not the weights")
    monkeypatch.setenv("ANONLAB_CENTERFACE_ONNX", str(wrong))
    review(ls.artifacts, list(store(ls.artifacts, {"street": texture(WIDTH, 192, 4)}).values()))
    cfg = annotation_cfg(ls.url, "push-no-detector")
    with pytest.raises(AnonlabError) as e:
        run_push(cfg, TAXONOMY, ls.artifacts)
    assert f"{wrong}: sha256" in str(e.value)
    assert "annotation.second_opinion=none" in str(e.value)
    assert connect(cfg).find_project("push-no-detector") is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("annotation.second_opinion=haar", ["annotation.second_opinion = 'haar'", "'none'"]),
        ("annotation.second_opinion_min_score=1", ["annotation.second_opinion_min_score = 1"]),
    ],
)
def test_a_bad_second_opinion_setting_is_refused_before_push_starts(
    params_file: Path, capsys: pytest.CaptureFixture[str], override: str, expected: list[str]
) -> None:
    argv = ["--params", str(params_file), "annotate", "push", "annotation.source=server", override]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert not (params_file.parent / "artifacts").exists()


def _ellipse(cx: float, cy: float, rx: float, ry: float, label: str = "face") -> dict:
    return {"value": {"x": cx, "y": cy, "radiusX": rx, "radiusY": ry, "ellipselabels": [label]}}


def test_a_face_is_covered_when_half_its_box_lies_inside_the_pre_annotated_faces() -> None:
    # Percent of a 200 x 100 image: a face ellipse over x 40..60, y 20..60 (pixels).
    faces = face_boxes([_ellipse(25, 40, 5, 20), _ellipse(50, 50, 40, 40, "person")], 200, 100)
    np.testing.assert_allclose(faces, [[40, 20, 60, 60]])
    rectangle = {"value": {"x": 10, "y": 10, "width": 5, "height": 10, "rectanglelabels": ["face"]}}
    np.testing.assert_allclose(face_boxes([rectangle], 200, 100), [[20, 10, 30, 20]])
    assert covered_share((42, 25, 58, 55), faces, 200) == 1.0  # inside
    assert covered_share((50, 20, 70, 60), faces, 200) == pytest.approx(0.5, abs=0.07)
    assert covered_share((100, 20, 120, 60), faces, 200) == 0.0  # elsewhere
    assert covered_share((42, 25, 58, 55), face_boxes([], 200, 100), 200) == 0.0
    # A face across a panorama's seam, drawn as two halves at both ends.
    halves = np.array([[190, 20, 200, 60], [0, 20, 10, 60]], np.float64)
    assert covered_share((190, 20, 210, 60), halves, 200) == 1.0


def test_order_and_score_agree() -> None:
    uncertainty = [0.3, 0.9, 0.5, 0.3, 0.3]
    missed = [0, 0, 1, 2, 0]
    order = queue_order(uncertainty, missed)
    # More misses first, then by decreasing uncertainty; ties in manifest order.
    assert order == [3, 2, 1, 0, 4]
    scores = [queue_score(uncertainty[i], missed[i]) for i in order]
    assert scores == sorted(scores)
    assert queue_score(0.0, 0) == 1.0 and queue_score(1.0, 0) == 0.5
    # Each missed face halves the score: one more miss scores below any uncertainty.
    assert queue_score(0.0, 2) <= queue_score(1.0, 1) < queue_score(0.0, 1)
