"""export: a tiny random-weight model through the real export (ONNX traced, checked against
PyTorch at export), the artifact it writes, and the runtime's refusal of altered artifacts."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.atomic import read_json, write_json
from data.errors import AnonlabError
from serving.export import run_export, sample_tiles
from serving.runtime.anonymize import DEFAULT_STYLES
from serving.runtime.artifact import SCHEMA_VERSION, load_artifact, manifest_digest
from serving.runtime.backends import Parity, compare
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import load_composite
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError
from serving.runtime.pipeline import Runtime
from serving.runtime.tiles import TilingSpec, cut, plan_windows
from tests.images import texture
from tests.serving.artifacts import (
    CLASSES,
    DEMO_GATE,
    NAME,
    THRESHOLDS,
    TILE,
    edit_manifest,
    evaluate_entry,
    export_setup,
    read_manifest,
    tiny_model_dir,
    write_validation,
)


@pytest.fixture
def artifact(shared_artifact: Path) -> Path:
    """The session's tiny exported artifact (tests/serving/conftest.py): the same export as
    `tiny_artifact` in a fresh folder, made once; tests here copy it before altering it."""
    return shared_artifact


def test_artifact_holds_what_the_runtime_needs_with_checksums(artifact: Path) -> None:
    assert artifact.name == f"{NAME}-1"
    assert sorted(p.name for p in artifact.iterdir()) == [
        "MODEL_CARD.md",
        "manifest.json",
        "model.onnx",
        "weights.safetensors",
    ]
    m = read_manifest(artifact)
    assert m["schema_version"] == SCHEMA_VERSION
    assert (m["name"], m["version"], m["classes"]) == (NAME, "1", CLASSES)
    assert m["thresholds"] == THRESHOLDS
    # The styles of conf/export/ (the runtime's defaults): a feathered ellipse for faces, etc.
    assert m["styles"] == {c: DEFAULT_STYLES[c].to_dict() for c in CLASSES}
    # The canvas: max(min_size 96, tile 128), so a whole window is seen at torchvision's scale.
    assert m["input_size"] == 128 and m["tiling"]["tile"] == TILE
    assert m["recall"]["holdout"]["face"] == {"iou": 0.5, "coverage": 0.8, "n": 12}
    assert m["provenance"]["weights_sha256"] == file_sha256(artifact / "weights.safetensors")
    for name, sha in m["files"].items():
        assert file_sha256(artifact / name) == sha
    # The ONNX check ran on val tiles and its numbers are in the manifest.
    parity = m["parity"]
    assert parity["tiles"] == 3 and parity["unmatched"] == 0 and parity["compared"] >= 10
    assert parity["max_box_px"] <= parity["bounds"]["box_px"]
    # Per class: what was compared; the classes allowed absent that were are named unchecked.
    assert parity["classes"]["face"]["compared"] > 0
    assert parity["unchecked"] == ["person", "license_plate", "vehicle"]
    assert parity["bounds"]["min_compared"] == 10
    card = (artifact / "MODEL_CARD.md").read_text()
    assert card.startswith("RELEASE GATE: recall of every class at least 0.95, by IoU and by ")
    assert (artifact / "manifest.json").read_text().startswith('{"notice": "RELEASE GATE: ')
    assert "judged on the lower bound of its 95% bootstrap interval" in card
    assert "## Intended use" in card and "## Known limits" in card
    assert "| face | all | 12 | 0.500 [0.300, 0.700] | 0.800 [0.600, 0.900] |" in card
    assert "not reached on val for license plate" in card
    assert load_artifact(artifact).manifest.thresholds == THRESHOLDS


def test_onnx_and_pytorch_backends_find_the_same_objects(artifact: Path) -> None:
    image = texture(300, 150, seed=5)  # a panorama (2:1): windows wrap around the seam
    found = [Runtime.load([artifact], backend=b).detect(image) for b in ("onnx", "torch")]
    assert len(found[0]) > 0
    parity = compare([found[0]], [found[1]], floor=min(THRESHOLDS.values()))
    assert parity.within(box_px=0.5, score=0.005, mask_iou=0.95), parity.describe()


def _dets(*rows: tuple[float, float]) -> Detections:
    """Person detections, one per (x0, score): 20 px boxes side by side."""
    boxes = np.array([[x, 10.0, x + 20.0, 40.0] for x, _ in rows], np.float32).reshape(-1, 4)
    scores = np.array([score for _, score in rows], np.float32)
    return Detections(boxes, scores, np.full(len(rows), 2, np.int64))


def test_parity_forgives_only_a_tie_for_the_last_place_under_the_detection_cap() -> None:
    # Both backends keep 3 (the cap); the third place goes to x=100 in one and x=200 in the
    # other, whose scores differ by float noise.
    onnx = _dets((0, 0.9), (50, 0.6), (100, 0.3001))
    torch = _dets((0, 0.9), (50, 0.6), (200, 0.3000))
    tie = compare([onnx], [torch], floor=0.1, cap=3)
    assert (tie.unmatched, tie.at_cap) == (0, 2) and tie.within(0.5, 0.005, 0.95)
    assert "2 at the detection cap" in tie.describe()
    assert compare([onnx], [torch], floor=0.1).unmatched == 2  # no cap: real differences
    # Under the cap, or a detection scoring well above the other's last place: not a tie.
    assert compare([onnx], [torch], floor=0.1, cap=4).unmatched == 2
    missing = _dets((0, 0.9), (50, 0.6), (300, 0.8))
    beyond = compare([missing], [torch], floor=0.1, cap=3)
    assert beyond.unmatched == 1 and beyond.at_cap == 1 and not beyond.within(0.5, 0.005, 0.95)


def _person(keypoints: list[tuple[float, float, float]]) -> Detections:
    """One person detection with keypoints (x, y, score)."""
    return Detections(
        np.array([[10.0, 10.0, 30.0, 40.0]]),
        np.array([0.9]),
        np.array([2]),
        keypoints=np.array([keypoints], np.float32),
    )


def test_parity_fails_when_keypoints_lie_apart_beyond_the_bound() -> None:
    def parity(a: Detections, b: Detections) -> Parity:
        return compare([a], [b], floor=0.1, keypoint_score=1.0)

    here = _person([(15, 20, 3.0), (25, 20, 0.2)])
    same = parity(here, here)
    # The keypoint scoring under keypoint_score in both (a flat heatmap) is not compared.
    assert (same.keypoints, same.max_keypoint_px, same.by_label) == (1, 0.0, {2: 1})
    assert same.within(0.5, 0.005, 0.95, keypoint_px=0.5)
    moved = parity(here, _person([(17, 20, 3.0), (25, 20, 0.2)]))
    assert moved.max_keypoint_px == 2.0 and not moved.within(0.5, 0.005, 0.95, keypoint_px=0.5)
    assert "1 keypoints by up to 2.000 px" in moved.describe()
    # Under the bar in both: its position is not held to the bound; over it in one: it is.
    assert parity(here, _person([(15, 20, 3.0), (30, 20, 0.3)])).within(0.5, 0.005, 0.95, 0.5)
    flipped = parity(here, _person([(15, 20, 3.0), (30, 20, 1.5)]))
    assert flipped.keypoints == 2 and not flipped.within(0.5, 0.005, 0.95, keypoint_px=0.5)


def test_parity_tiles_hold_every_class_first(tmp_path: Path) -> None:
    # Objects of each class sit in one window that the first windows of each image would miss.
    layout = {
        "a.png": ((128, 128), []),
        "b.png": ((128, 128), []),
        "c.png": ((300, 200), [("license_plate", (270, 170, 20, 10))]),
        "d.png": ((128, 128), [("face", (20, 20, 16, 20)), ("person", (10, 10, 60, 110))]),
        "e.png": ((240, 128), [("vehicle", (200, 60, 30, 20))]),
    }
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations, pixels = [], [], {}
    for k, (name, ((w, h), objects)) in enumerate(layout.items()):
        pixels[name] = texture(w, h, seed=k)
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(pixels[name], cv2.COLOR_RGB2BGR))
        images.append({"id": k, "file_name": name, "width": w, "height": h})
        for cls, box in objects:
            annotations.append({"image_id": k, "category_id": ids[cls], "bbox": list(box)})
    val = {"images": images, "annotations": annotations, "categories": categories}
    write_json(tmp_path / "val.json", val)
    spec = TilingSpec(tile=TILE, overlap=16)

    sample = sample_tiles(tmp_path, spec, 3, CLASSES)
    assert [name for name, _ in sample.windows] == ["d.png", "c.png", "e.png"]
    assert sample.sampled == sample.objects == dict.fromkeys(CLASSES, 1)
    for tile, (name, window) in zip(sample.tiles, sample.windows, strict=True):
        np.testing.assert_array_equal(tile, cut(pixels[name], window))
    # c.png's plate is in its last window, e.png's vehicle in its second, not their first.
    assert sample.windows[1][1] == plan_windows(300, 200, spec)[-1]
    assert sample.windows[2][1] == plan_windows(240, 128, spec)[1]
    # Room for more: then the first windows of the other images.
    more = sample_tiles(tmp_path, spec, 5, CLASSES)
    assert [name for name, _ in more.windows] == ["d.png", "c.png", "e.png", "a.png", "b.png"]
    # A keypoint model detects persons only: its first tile holds one.
    assert sample_tiles(tmp_path, spec, 1, ["person"]).windows[0][0] == "d.png"


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    m = {**read_manifest(folder), **changes}
    m["manifest_sha256"] = manifest_digest(m)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("weights", "weights.safetensors was altered or corrupted"),
        ("onnx_missing", "model.onnx is missing"),
        ("threshold", "the manifest was altered after export"),
        (
            "schema",
            rf"schema_version {SCHEMA_VERSION + 1} is newer than this runtime reads "
            rf"\({SCHEMA_VERSION}\)",
        ),
        ("not_json", "not readable JSON"),
    ],
)
def test_altered_artifacts_are_refused_with_what_is_wrong(
    artifact: Path, tmp_path: Path, tamper: str, message: str
) -> None:
    folder = _copy(artifact, tmp_path)
    if tamper == "weights":
        data = bytearray((folder / "weights.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "weights.safetensors").write_bytes(bytes(data))
    elif tamper == "onnx_missing":
        (folder / "model.onnx").unlink()
    elif tamper == "threshold":
        m = read_manifest(folder)
        m["thresholds"]["face"] = 0.99  # someone "tunes" the face threshold by hand
        (folder / "manifest.json").write_text(json.dumps(m))
    elif tamper == "schema":
        _rewrite_manifest(folder, schema_version=SCHEMA_VERSION + 1)
    else:
        (folder / "manifest.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for backend in ("onnx", "torch"):
        with pytest.raises(ArtifactError, match=message):
            Runtime.load([folder], backend=backend)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched


def test_export_refuses_a_model_that_did_not_pass_validation(tmp_path: Path) -> None:
    setup = export_setup(tmp_path)
    tiny_model_dir(setup.artifacts)
    write_json(setup.artifacts / "eval" / "metrics.json", {NAME: evaluate_entry()})
    verdict = {"passed": False, "failed": [f"{NAME}.holdout.target.iou"], "challengers": {}}
    write_json(setup.artifacts / "validation" / "verdict.json", verdict)
    earlier = setup.artifacts / "serving" / "earlier-1" / "manifest.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    with pytest.raises(AnonlabError, match=r"validation did not pass \(tiny.holdout.target.iou\)"):
        run_export(setup)
    assert earlier.read_text() == "{}"  # the previous export is left as it was


def test_export_without_a_verdict_says_to_validate_first(tmp_path: Path) -> None:
    setup = export_setup(tmp_path)
    earlier = setup.artifacts / "serving" / "earlier-1" / "manifest.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    with pytest.raises(AnonlabError, match=r"verdict\.json: not found; run `anonlab validate`"):
        run_export(setup)
    (setup.artifacts / "validation").mkdir()
    (setup.artifacts / "validation" / "verdict.json").write_text('{"passed": tr')  # cut short
    with pytest.raises(AnonlabError, match=r"verdict\.json: not readable JSON"):
        run_export(setup)
    assert earlier.read_text() == "{}"


def test_export_fails_and_writes_nothing_when_onnx_and_pytorch_disagree(tmp_path: Path) -> None:
    # Bounds no two numerical implementations meet: the check must fail and say by how much.
    setup = export_setup(tmp_path, ["export.parity.box_px=1e-12", "export.parity.score=1e-12"])
    setup = replace(setup, models=[NAME])
    tiny_model_dir(setup.artifacts)
    write_validation(setup)
    with pytest.raises(AnonlabError, match=r"disagree on 3 val tiles: \d+ detections compared"):
        run_export(setup)
    assert not (setup.artifacts / "serving").exists()
    np.testing.assert_equal(len(list((setup.artifacts / "models" / NAME).iterdir())), 2)


def test_export_fails_and_writes_nothing_when_nothing_was_compared(tmp_path: Path) -> None:
    # A score floor above every score of the random model: neither backend detects anything,
    # which agrees perfectly and proves nothing.
    setup = replace(export_setup(tmp_path, ["evaluate.min_threshold=0.99"]), models=[NAME])
    tiny_model_dir(setup.artifacts)
    write_validation(setup)
    with pytest.raises(AnonlabError) as failed:
        run_export(setup)
    message = str(failed.value)
    assert "proves nothing on 3 val tiles (0 detections compared" in message
    assert "fewer than export.parity.min_compared = 10: raise export.parity.tiles" in message
    assert "class face never appeared among the compared detections: val.json has no " in message
    assert "add it to export.parity.allow_absent" in message
    assert message.endswith("Nothing was exported.")
    assert not (setup.artifacts / "serving").exists()


# -- chain of custody: what validate passed is what ships --------------------------------------


def test_export_ships_the_validated_weights_and_refuses_any_other(tmp_path: Path) -> None:
    setup = replace(export_setup(tmp_path), models=[NAME])
    weights = tiny_model_dir(setup.artifacts) / "weights.safetensors"
    # Validated under the demo's gate: every file says so first, and the runtime needs to be told.
    validated = write_validation(setup, version="3", gate=DEMO_GATE)
    # The model's artifact, then the anonymizer it makes alone (no keypoint model: no heads).
    folder, composite = run_export(setup)
    assert composite.name == "anonymizer-3" and load_composite(composite).members[0].path.name == (
        folder.name
    )
    m = read_manifest(folder)
    assert m["provenance"]["weights_sha256"] == validated == m["files"]["weights.safetensors"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"sha256 `{validated}`: the bytes evaluate scored" in card
    first = card.splitlines()[0]
    assert first.startswith("NOT A RELEASE: judged under a gate weaker than the release gate: ")
    assert "target recall face 0.25" in first and "not by iou" in first
    assert "refuses to load this artifact unless told `--allow-demo`" in card
    assert (folder / "manifest.json").read_text().startswith(f'{{"notice": "{first}"')
    with pytest.raises(ArtifactError, match=r"not a release: .*tiny version 3.*--allow-demo"):
        Runtime.load([folder])
    assert Runtime.load([folder], allow_demo=True).artifacts[0].identity()["release"] is False
    shipped = {p.name: p.read_bytes() for p in folder.iterdir()}

    original = weights.read_bytes()
    changed = bytearray(original)
    changed[-1] ^= 1  # a byte of the last tensor: the file still loads
    weights.write_bytes(bytes(changed))
    now = file_sha256(weights)
    with pytest.raises(AnonlabError) as refused:
        run_export(setup)
    message = str(refused.value)
    assert f"has sha256 {now}, but the weights validate passed have sha256 {validated}" in message
    assert "Run `anonlab evaluate` and `anonlab validate`" in message
    # The previous export is left as it was, and no staging folder was made.
    assert sorted(p.name for p in (setup.artifacts / "serving").iterdir()) == [
        composite.name,
        folder.name,
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == shipped
    assert not list(setup.artifacts.glob(".serving*"))

    # The validated weights again, but thresholds from a metrics.json validate never judged.
    weights.write_bytes(original)
    metrics = setup.artifacts / "eval" / "metrics.json"
    edited = read_json(metrics)
    edited[NAME]["thresholds"]["face"]["threshold"] = 0.05
    write_json(metrics, edited)
    with pytest.raises(AnonlabError, match=r"but validate judged the one with sha256 [0-9a-f]{64}"):
        run_export(setup)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == shipped


def test_export_refuses_a_verdict_that_names_no_weights(tmp_path: Path) -> None:
    setup = replace(export_setup(tmp_path), models=[NAME])
    tiny_model_dir(setup.artifacts)
    write_validation(setup)
    verdict = read_json(setup.artifacts / "validation" / "verdict.json")
    del verdict["models"]  # as an older validate wrote it
    write_json(setup.artifacts / "validation" / "verdict.json", verdict)
    with pytest.raises(AnonlabError, match=r"names no validated weights for tiny"):
        run_export(setup)
    assert not (setup.artifacts / "serving").exists()
    # Nor one that records no gate: what it proved could not be told to the runtime.
    write_validation(setup)
    verdict = read_json(setup.artifacts / "validation" / "verdict.json")
    del verdict["gate"]
    write_json(setup.artifacts / "validation" / "verdict.json", verdict)
    with pytest.raises(AnonlabError, match=r"verdict.json: records no gate it judged"):
        run_export(setup)
    assert not (setup.artifacts / "serving").exists()


def test_the_runtime_logs_what_it_loaded_and_refuses_unvalidated_provenance(
    shared_artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = read_manifest(shared_artifact)
    with caplog.at_level(logging.INFO, logger="serving.runtime.pipeline"):
        Runtime.load([shared_artifact])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    weights, manifest = m["files"]["weights.safetensors"], m["manifest_sha256"]
    assert line.startswith(
        f"loaded {NAME} version 1 (weights sha256 {weights[:12]}..., "
        f"manifest_sha256 {manifest[:12]}...)"
    )
    # A manifest claiming other validated weights than the ones it ships is refused.
    folder = _copy(shared_artifact, tmp_path)
    edit_manifest(folder, lambda m: m["provenance"].update(weights_sha256="0" * 64))
    with pytest.raises(ArtifactError, match=r"provenance\.weights_sha256 = '0{64}': must be"):
        Runtime.load([folder])
