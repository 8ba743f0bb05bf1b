"""Independent detectors and `anonlab audit`, on the real public-domain photographs that
installed packages ship: scikit-image's astronaut (Eileen Collins) and camera(man), and
matplotlib's Grace Hopper; and photos without people (coffee, rocket, bricks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import skimage.data

from serving.cli.main import main
from serving.runtime.anonymize import DEFAULT_STYLES, anonymize, hidden_mask
from serving.runtime.audit import audit
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError
from serving.runtime.independent import load_detector, parse_names
from serving.runtime.independent.centerface import ENVIRONMENT, CenterFace

# A point inside each photo's face (x, y), read off the photographs.
FACES = {"astronaut": (226, 118), "camera": (230, 158), "grace_hopper": (266, 234)}
NO_PEOPLE = ("coffee", "rocket", "brick")


def photo(name: str) -> np.ndarray:
    """The photograph as uint8 RGB."""
    if name == "grace_hopper":
        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


@pytest.fixture(scope="module")
def centerface() -> CenterFace:
    return CenterFace()


def _holds(box: np.ndarray, point: tuple[int, int]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


@pytest.mark.parametrize("name", sorted(FACES))
def test_centerface_finds_the_face_in_each_photograph(centerface: CenterFace, name: str) -> None:
    found = centerface.detect(photo(name))
    confident = found.select(found.scores >= 0.5)
    assert len(confident) == 1, (found.boxes, found.scores)
    assert _holds(confident.boxes[0], FACES[name])


def test_centerface_finds_no_face_where_there_is_none(centerface: CenterFace) -> None:
    for name in NO_PEOPLE:
        assert len(centerface.detect(photo(name))) == 0, name


def test_centerface_finds_a_small_face_in_a_panorama_across_the_seam(
    centerface: CenterFace,
) -> None:
    face = photo("astronaut")[40:200, 160:290]  # 130 x 160 px around the face
    pano = np.full((1400, 2800, 3), 90, np.uint8)
    pano[600:760, 2735:] = face[:, :65]  # the left half of the face ends the panorama,
    pano[600:760, :65] = face[:, 65:]  # the right half begins it
    found = centerface.detect(pano)
    assert len(found) == 1, found.boxes
    x0, _, x1, _ = found.boxes[0]
    assert x0 < 2800 < x1  # one face, across the seam, not two halves


def test_haar_finds_the_astronauts_face() -> None:
    haar = load_detector("haar")
    found = haar.detect(photo("astronaut"))
    faces = found.select(found.labels == 1)
    assert any(_holds(box, FACES["astronaut"]) for box in faces.boxes)


def test_detector_names_are_checked() -> None:
    assert parse_names("haar, centerface,haar") == ["haar", "centerface"]
    with pytest.raises(ValueError, match="give one or more of centerface, haar"):
        parse_names("centerface,retinaface")
    with pytest.raises(ValueError, match="use one of centerface, haar"):
        load_detector("yolo")


def test_weights_that_are_not_centerfaces_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, centerface: CenterFace
) -> None:
    altered = tmp_path / "centerface.onnx"
    shutil.copyfile(centerface.path, altered)
    with altered.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setenv(ENVIRONMENT, str(altered))
    with pytest.raises(ArtifactError, match="is not that of the CenterFace weights"):
        CenterFace()
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "missing.onnx"))
    with pytest.raises(ArtifactError, match="the CenterFace weights are not there"):
        CenterFace()


def _publish(
    folder: Path, name: str, *, hide: bool, record: str = "sidecar", centerface: CenterFace
) -> Path:
    """The photo as `anonlab blur` would publish it: its face hidden in the face style (or not:
    a miss), with a sidecar listing what was hidden, or a mask of it."""
    rgb = photo(name)
    height, width = rgb.shape[:2]
    found = centerface.detect(rgb)
    hidden = found if hide else Detections.empty(False)
    out = anonymize(rgb, hidden, ["face"], DEFAULT_STYLES)
    path = folder / f"{name}.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if record == "sidecar":
        detections = [
            {"class": "face", "score": float(s), "box": [float(v) for v in b]}
            for b, s in zip(hidden.boxes, hidden.scores, strict=True)
        ]
        body = {"input": name, "width": width, "height": height, "detections": detections}
        Path(f"{path}.json").write_text(json.dumps(body), encoding="utf-8")
    elif record == "mask":
        mask = hidden_mask(width, height, hidden, ["face"], DEFAULT_STYLES)
        cv2.imwrite(f"{path}.mask.png", mask.astype(np.uint8) * 255)
    return path


def test_an_audit_reports_faces_left_visible_and_nothing_where_they_were_hidden(
    tmp_path: Path, centerface: CenterFace
) -> None:
    missed, hidden = tmp_path / "missed", tmp_path / "hidden"
    missed.mkdir()
    hidden.mkdir()
    for name in FACES:
        _publish(missed, name, hide=False, centerface=centerface)
        _publish(hidden, name, hide=True, record="mask", centerface=centerface)
    for name in NO_PEOPLE:
        _publish(hidden, name, hide=False, centerface=centerface)

    report = audit([str(missed)], [centerface])
    assert report.audited == 3 and not report.unauditable and not report.failed
    assert sorted(Path(r.image).stem for r in report.above) == sorted(FACES)
    for r in report.above:
        assert r.cls == "face" and r.detector == "centerface" and r.hidden < 0.5
        assert _holds(np.array(r.box), FACES[Path(r.image).stem])
    assert report.per_thousand == 1000.0 and not report.passed

    clean = audit([str(hidden)], [centerface])
    # The masks beside the images are not audited as images of their own.
    assert clean.audited == len(FACES) + len(NO_PEOPLE)
    assert clean.above == [] and clean.passed


def test_an_image_without_a_record_of_what_was_hidden_is_unauditable_not_passed(
    tmp_path: Path, centerface: CenterFace, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "published"
    out.mkdir()
    kept = _publish(out, "coffee", hide=False, record="none", centerface=centerface)
    (out / "broken.jpg").write_bytes(kept.read_bytes()[:2000])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    report_file = tmp_path / "audit.json"
    code = main(["audit", str(out), "--out", str(report_file)])
    printed = capsys.readouterr()
    assert code == 1
    assert "0 residuals" in printed.out and "1 unauditable, 1 failed" in printed.out
    assert f"unauditable: {kept}: no mask or sidecar" in printed.err
    assert "failed:" in printed.err and "broken.jpg" in printed.err
    report = json.loads(report_file.read_text())
    assert report["passed"] is False and report["audited"] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def test_the_audit_command_fails_on_a_residual_and_passes_on_hidden_faces(
    tmp_path: Path, centerface: CenterFace, capsys: pytest.CaptureFixture[str]
) -> None:
    missed, hidden = tmp_path / "missed", tmp_path / "hidden"
    missed.mkdir()
    hidden.mkdir()
    _publish(missed, "grace_hopper", hide=False, centerface=centerface)
    _publish(hidden, "grace_hopper", hide=True, centerface=centerface)
    assert main(["audit", str(missed), "--detectors", "centerface,haar"]) == 1
    printed = capsys.readouterr()
    # Each detector reports the face it sees: two residuals in one image.
    assert "2 residuals scoring 0.5 or more (2000.0 per 1,000 images)" in printed.out
    assert "face by centerface" in printed.err and "face by haar" in printed.err
    assert main(["audit", str(hidden)]) == 0
    assert "0 residuals" in capsys.readouterr().out
    assert main(["audit", str(hidden), "--detectors", "retinaface"]) == 2
    assert "give one or more of centerface, haar" in capsys.readouterr().err


def test_blur_audit_checks_what_the_run_wrote(
    tmp_path: Path, shared_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny random-weight model misses real faces: blur --audit says so and exits 1; on a
    photo without people the audit passes."""
    faces, empty = tmp_path / "faces", tmp_path / "empty"
    faces.mkdir()
    empty.mkdir()
    cv2.imwrite(str(faces / "grace.png"), cv2.cvtColor(photo("grace_hopper"), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(empty / "coffee.png"), cv2.cvtColor(photo("coffee"), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    args = ["--model", str(shared_artifact), "--audit"]
    assert main(["blur", str(faces), "--out", str(out / "faces"), *args]) == 1
    printed = capsys.readouterr()
    assert "anonymized 1 images" in printed.out
    assert "audited 1 images with centerface" in printed.out
    assert "residual:" in printed.err and "grace.png: face by centerface" in printed.err
    assert (out / "faces" / "grace.png.json").is_file()  # --audit turned the sidecar on
    assert main(["blur", str(empty), "--out", str(out / "empty"), *args]) == 0
    assert "0 residuals" in capsys.readouterr().out
    assert main(["blur", str(empty), "--out", str(out / "x"), *args[:2], "--audit", "yolo"]) == 2
    assert "give one or more of centerface, haar" in capsys.readouterr().err
    assert not (out / "x").exists()  # refused before anything was written
