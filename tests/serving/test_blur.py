"""`anonlab blur` on a real (tiny, random-weight) exported artifact: anonymized copies that keep
their files' metadata, and failing closed: a failure at any step leaves no output for that
image, is recorded, and makes the command exit non-zero after the others are done."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from serving.cli import main as cli_main
from serving.runtime import pipeline
from serving.runtime.batch import FAILURES, blur_batch, find_inputs
from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.pipeline import Runtime, artifact_folders
from tests.images import jpeg_bytes, texture, write
from tests.serving.artifacts import tiny_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("blur-artifact"))


@pytest.fixture(scope="module")
def runtime(artifact: Path) -> Runtime:
    return Runtime.load([artifact])


def _inputs(root: Path) -> dict[str, Path]:
    """A folder of inputs: a JPEG with GPS turned by EXIF orientation 6, a PNG, a panorama."""
    return {
        "phone": write(
            root / "in" / "day1" / "phone.jpg",
            jpeg_bytes(texture(160, 120, seed=1), quality=87, gps=True, orientation=6),
        ),
        "png": write(root / "in" / "day1" / "still.png", _png(texture(150, 110, seed=2))),
        "pano": write(root / "in" / "pano.jpg", jpeg_bytes(texture(320, 160, seed=3), gps=True)),
    }


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".")]


def test_blur_writes_anonymized_copies_that_keep_their_metadata(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]
    assert cli_main([*argv, "--sidecar", "--masks"]) == 0
    assert "anonymized 3 images" in capsys.readouterr().out
    assert not (out / FAILURES).exists() and not _leftovers(out)

    # Same relative paths, names and formats; EXIF (GPS, orientation) and quality kept.
    phone_in, phone_out = Image.open(inputs["phone"]), Image.open(out / "day1" / "phone.jpg")
    assert phone_out.format == "JPEG" and phone_out.size == phone_in.size
    assert phone_out.getexif()[0x0112] == 6
    assert dict(phone_out.getexif().get_ifd(0x8825)) == dict(phone_in.getexif().get_ifd(0x8825))
    assert phone_out.quantization == phone_in.quantization

    # The sidecar lists what was hidden, in upright coordinates (orientation 6: 120 x 160).
    sidecar = json.loads((out / "day1" / "phone.jpg.json").read_text())
    assert (sidecar["width"], sidecar["height"]) == (120, 160)
    assert sidecar["detections"], "the tiny model hides something at its 0.1 thresholds"
    assert {d["class"] for d in sidecar["detections"]} <= set(sidecar["classes"])
    assert sidecar["metadata_dropped"] == []  # a plain camera JPEG loses nothing

    # PNG: lossless, so every pixel outside the hidden mask is the input's, bit for bit, and
    # pixels inside it changed.
    before = cv2.imread(str(inputs["png"]), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(out / "day1" / "still.png"), cv2.IMREAD_UNCHANGED)
    hidden = cv2.imread(str(out / "day1" / "still.png.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert hidden.any() and not hidden.all()
    np.testing.assert_array_equal(after[~hidden], before[~hidden])
    assert (after[hidden] != before[hidden]).any()


def test_blur_takes_globs_and_refuses_to_overwrite_its_inputs(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    jobs = find_inputs([str(tmp_path / "in" / "**" / "*.jpg")])
    assert sorted(str(j.relative) for j in jobs) == ["day1/phone.jpg", "pano.jpg"]
    original = inputs["pano"].read_bytes()
    code = cli_main(
        ["blur", str(inputs["pano"]), "--model", str(artifact), "--out", str(tmp_path / "in")]
    )
    assert code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert inputs["pano"].read_bytes() == original


def test_a_folder_of_artifacts_loads_every_model_in_it(artifact: Path, tmp_path: Path) -> None:
    assert artifact_folders([artifact.parent]) == [artifact]
    assert artifact_folders([artifact]) == [artifact]
    with pytest.raises(ServingError, match=r"no manifest\.json; this is not an exported artifact"):
        Runtime.load([tmp_path])


class _Failing(Runtime):
    """The real runtime, failing at one step for the image whose width is `width`."""

    def __init__(self, real: Runtime, step: str, width: int) -> None:
        super().__init__(real.artifacts, real.detectors)
        self.step, self.width = step, width

    def detect(self, rgb: np.ndarray) -> Detections:
        if self.step == "detect" and rgb.shape[1] == self.width:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().detect(rgb)


@pytest.mark.parametrize("step", ["decode", "detect", "anonymize", "write"])
def test_a_failure_at_any_step_leaves_no_output_for_that_image_only(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    jobs = find_inputs([str(tmp_path / "in")])
    # An earlier run left an output for the image that will fail: it must not survive.
    assert not blur_batch(runtime, jobs, out, sidecar=True).failures
    victim = out / "pano.jpg"
    assert victim.exists()

    failing = _Failing(runtime, step, width=320)
    if step == "decode":
        inputs["pano"].write_bytes(inputs["pano"].read_bytes()[:2000])  # truncated upload
    elif step == "anonymize":
        real = pipeline.write_image

        def broken(file, pixels):  # type: ignore[no-untyped-def]
            if file.width == 320:
                raise OSError("No space left on device")
            return real(file, pixels)

        monkeypatch.setattr(pipeline, "write_image", broken)
    elif step == "write":
        victim.unlink()
        (out / "pano.jpg.json").unlink()
        victim.mkdir()  # the output's name is taken by a folder: it cannot be written
    report = blur_batch(failing, jobs, out, sidecar=True)

    assert [(f.input, f.step) for f in report.failures] == [(str(inputs["pano"]), step)]
    assert report.written == 2
    assert not victim.is_file() and not (out / "pano.jpg.json").exists()
    assert (out / "day1" / "phone.jpg").is_file() and (out / "day1" / "still.png").is_file()
    rows = [json.loads(line) for line in (out / FAILURES).read_text().splitlines()]
    assert rows == [{"input": str(inputs["pano"]), "step": step, "error": rows[0]["error"]}]
    assert rows[0]["error"]
    assert not _leftovers(out)


def test_blur_exits_non_zero_after_finishing_the_others(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    inputs["png"].write_bytes(b"this is not an image")
    out = tmp_path / "out"
    assert (
        cli_main(["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]) == 1
    )
    captured = capsys.readouterr()
    assert "1 FAILED" in captured.out and FAILURES in captured.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "day1/phone.jpg",
        "pano.jpg",
    ]
    assert not (out / "day1" / "still.png").exists()
    row = json.loads((out / FAILURES).read_text())
    assert row["step"] == "decode" and "still.png" in row["input"]
    # A later run where everything succeeds removes the stale failures file.
    inputs["png"].write_bytes(_png(texture(150, 110, seed=2)))
    assert (
        cli_main(["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]) == 0
    )
    assert not (out / FAILURES).exists()
    assert Image.open(io.BytesIO((out / "day1" / "still.png").read_bytes())).format == "PNG"


def _marker_detector(tiles: list[np.ndarray]) -> list[Detections]:
    """Finds magenta blobs (255, 0, 255) in each tile as faces (label 1), box and mask."""
    found = []
    for tile in tiles:
        marked = np.all(tile == (255, 0, 255), axis=2).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(marked)
        boxes, masks = [], []
        for k in range(1, n):
            x, y, w, h = stats[k, :4]
            boxes.append([x, y, x + w, y + h])
            masks.append(labels[y : y + h, x : x + w] == k)
        found.append(
            Detections(np.array(boxes).reshape(-1, 4), [0.9] * len(boxes), [1] * len(boxes), masks)
        )
    return found


def test_a_face_across_a_panoramas_seam_is_hidden_on_both_sides(runtime: Runtime) -> None:
    # The runtime as shipped (the artifact's tiling, styles, thresholds, encoding) with a
    # detector that sees exactly the drawn face, so what is tested is the seam, not the model.
    seam = Runtime(runtime.artifacts, [_marker_detector])
    pano = texture(512, 256, seed=7)
    pano[100:130, 496:512] = (255, 0, 255)  # one face: 16 columns at the right end...
    pano[100:130, 0:14] = (255, 0, 255)  # ...and 14 at the left, across the seam
    done = seam.anonymize_bytes(_png(pano))
    assert done.panorama and len(done.detections) == 1  # merged into one object across tiles
    box = done.detections.boxes[0]
    assert box[0] == 496 and box[2] == 512 + 14  # x1 past the width: it wraps
    after = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(done.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    face = np.zeros(pano.shape[:2], bool)
    face[100:130, 496:] = face[100:130, :14] = True
    assert not np.all(after[face] == (255, 0, 255), axis=1).any()  # no face pixel survives
    far = np.ones_like(face)
    far[60:170, 440:] = far[60:170, :70] = False
    np.testing.assert_array_equal(after[far], pano[far])  # the rest is untouched
