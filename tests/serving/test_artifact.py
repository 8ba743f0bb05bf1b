"""Loading a model set fails closed: a folder of artifacts loads whole or not at all, manifest
values the runtime cannot run safely are refused even when the checksums hold, the classes the
deployment requires must be detected, and pinned manifests must be exactly the ones loaded."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from serving.cli import main
from serving.runtime.artifact import Manifest, manifest_digest
from serving.runtime.errors import ArtifactError
from serving.runtime.pipeline import Runtime
from serving.runtime.release import Gate, release_notice, release_problems
from tests.images import jpeg_bytes, texture, write
from tests.serving.artifacts import edit_manifest, read_manifest

WRONG_PIN = "0" * 64


@pytest.fixture(scope="module")
def artifact(shared_artifact: Path) -> Path:
    return shared_artifact  # read only: tests that change an artifact change a copy


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write(tmp_path / "in" / "photo.jpg", jpeg_bytes(texture(96, 64, seed=4)))


def _copy(artifact: Path, to: Path) -> Path:
    return Path(shutil.copytree(artifact, to))


def _blur(
    capsys: pytest.CaptureFixture[str], photo: Path, out: Path, *options: str
) -> tuple[int, str]:
    code = main(["blur", str(photo), "--out", str(out), *options])
    return code, capsys.readouterr().err


def _refused(code: int, err: str, out: Path) -> None:
    """The command failed with a message, not a traceback, and wrote nothing."""
    assert code == 2 and err.startswith("error: ")
    assert "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# A folder of artifacts: whole or refused


def test_a_folder_of_artifacts_loads_every_model_in_it(artifact: Path, tmp_path: Path) -> None:
    models = tmp_path / "serving"
    first, second = _copy(artifact, models / "tiny-1"), _copy(artifact, models / "tiny-2")
    runtime = Runtime.load([models])
    assert [a.path for a in runtime.artifacts] == [first, second]


def test_blur_refuses_a_folder_of_artifacts_with_a_half_copied_model(
    artifact: Path, tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "serving"
    _copy(artifact, models / "tiny-1")
    half = models / "tiny-2"
    half.mkdir()
    shutil.copyfile(artifact / "model.onnx", half / "model.onnx")  # the copy stopped here
    out = tmp_path / "out"
    code, err = _blur(capsys, photo, out, "--model", str(models))
    _refused(code, err, out)
    assert f"{models}: a folder of artifacts is loaded whole or not at all" in err
    assert "tiny-2/ (no manifest.json: a half-finished copy?)" in err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # A complete copy left under an export's or rsync's temporary name is refused too.
        (".tiny-2.staging", r"\.tiny-2\.staging/ \(hidden: left by an interrupted export"),
        ("notes.txt", r"notes\.txt \(a file\)"),
        ("missing_onnx", r"tiny-2: model\.onnx is missing"),
        ("cut_manifest", r"tiny-2/manifest\.json: not readable JSON"),
    ],
)
def test_a_folder_of_artifacts_with_anything_else_in_it_is_refused(
    artifact: Path, tmp_path: Path, entry: str, message: str
) -> None:
    models = tmp_path / "serving"
    _copy(artifact, models / "tiny-1")
    if entry == "notes.txt":
        (models / entry).write_text("models for the 2026 campaign")
    elif entry.startswith("."):
        _copy(artifact, models / entry)
    else:
        other = _copy(artifact, models / "tiny-2")
        if entry == "missing_onnx":
            (other / "model.onnx").unlink()
        else:
            (other / "manifest.json").write_bytes((other / "manifest.json").read_bytes()[:200])
    with pytest.raises(ArtifactError, match=message):
        Runtime.load([models])


def test_a_folder_without_any_artifact_says_so(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(ArtifactError, match=r"nor a folder of them \(none of its entries has one"):
        Runtime.load([tmp_path])


# ---------------------------------------------------------------------------------------------
# Manifest values, with the manifest_sha256 recomputed after the edit


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            m = m[key]
        if value is _DELETE:
            del m[leaf]
        else:
            m[leaf] = value

    return edit


_DELETE = object()
TWO_FACES = ["face", "face", "license_plate", "vehicle"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("thresholds.face", math.nan, "thresholds.face = nan: must be a number from score_floor"),
        ("thresholds.face", 2.0, "thresholds.face = 2.0: must be a number from score_floor"),
        ("thresholds.face", -0.1, "thresholds.face = -0.1"),
        ("thresholds.face", math.inf, "thresholds.face = inf"),
        ("thresholds.face", 0.01, "thresholds.face = 0.01: must be a number from score_floor 0.05"),
        ("thresholds.face", "0.5", "thresholds.face = '0.5'"),
        ("thresholds.face", _DELETE, "no operating threshold for class 'face'"),
        ("thresholds.dog", 0.5, "thresholds.dog = 0.5: 'dog' is not one of classes"),
        ("styles.face", "none", "styles.face = 'none': a style must be a mapping"),
        ("styles.face", {"shape": "none"}, "style shape 'none' is not one of: ellipse, mask, box"),
        ("styles.face.colour", "red", "style key(s) 'colour' not allowed"),
        ("styles.face", None, "styles.face = None: a style must be a mapping"),
        ("styles.vehicle", _DELETE, "styles: no style for class 'vehicle'"),
        ("classes", [], "classes = []: must be a non-empty list"),
        ("classes", TWO_FACES, "lists ['face'] more than once"),
        ("score_floor", math.nan, "score_floor = nan: must be a number from 0 to below 1"),
        ("mask_threshold", 1.5, "mask_threshold = 1.5: must be a number above 0, below 1"),
        ("input_size", 0, "input_size = 0: must be a whole number"),
        ("input_size", 96, "input_size = 96: must be 128, the network input"),
        ("input_size", "128", "input_size = '128'"),
        ("tiling.tile", 8, "tiling.tile = 8: must be a whole number 32 to 8192"),
        ("tiling.overlap", 128, "tiling.overlap = 128: must be a whole number 0 to below tile"),
        ("tiling.scales", [math.nan], "tiling.scales = [nan]"),
        ("tiling.scales", [1000.0], "tiling.scales = [1000.0]"),
        ("tiling.scales", [0.33], "tiling: tiling scale 0.33 is not a simple fraction"),
        ("tiling.panorama_aspect", math.inf, "tiling.panorama_aspect = inf"),
        ("tiling.merge_iou", _DELETE, "tiling: missing keys ['merge_iou']"),
        ("architecture.kind", "yolo", "architecture.kind = 'yolo': must be one of maskrcnn"),
        ("architecture.min_size", 0, "architecture.min_size = 0"),
        ("architecture.classes", ["person", "face", "license_plate", "vehicle"], "label i + 1"),
        ("files.model.onnx", _DELETE, "files: lists no model.onnx"),
        ("name", "", "name = '': must be a non-empty string"),
        ("gate", {}, "gate = {}: must be the gate validate passed the model under"),
        ("gate.estimate", "mean", "gate: estimate 'mean': must be one of"),
        ("notice", "RELEASE GATE: trust me", "notice = 'RELEASE GATE: trust me': must be the"),
    ],
)
def test_manifest_values_the_runtime_cannot_run_safely_are_refused(
    artifact: Path, key: str, value: Any, expected: str
) -> None:
    m = read_manifest(artifact)
    if key == "files.model.onnx":
        del m["files"]["model.onnx"]
    else:
        _set(key, value)(m)
    m["manifest_sha256"] = manifest_digest(m)
    raw = json.loads(json.dumps(m))  # as a manifest.json on disk (NaN and Infinity included)
    with pytest.raises(ArtifactError) as refused:
        Manifest.from_json(raw, "tiny-1/manifest.json")
    message = str(refused.value)
    assert message.startswith("tiny-1/manifest.json: invalid manifest: ")
    assert expected in message
    assert message.endswith(
        "Export the model again (`anonlab export`) instead of editing its manifest"
    )


def test_every_problem_of_a_manifest_is_named_at_once(artifact: Path) -> None:
    m = read_manifest(artifact)
    m["thresholds"]["face"] = math.nan
    m["styles"]["license_plate"] = "none"
    m["manifest_sha256"] = manifest_digest(m)
    with pytest.raises(ArtifactError, match=r"thresholds\.face = nan.*; styles\.license_plate"):
        Manifest.from_json(json.loads(json.dumps(m)), "manifest.json")


def test_blur_refuses_a_rehashed_manifest_with_a_nan_threshold(
    artifact: Path, tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(artifact, tmp_path / "tiny-1")
    edit_manifest(folder, _set("thresholds.face", math.nan))
    out = tmp_path / "out"
    code, err = _blur(capsys, photo, out, "--model", str(folder))
    _refused(code, err, out)
    assert f"{folder / 'manifest.json'}: invalid manifest: thresholds.face = nan" in err


# ---------------------------------------------------------------------------------------------
# Releases only, unless told


def _demo_gate(m: dict[str, Any]) -> None:
    m["gate"] = {**m["gate"], "metrics": ["coverage"], "estimate": "point"}
    m["notice"] = release_notice(release_problems(Gate.from_dict(m["gate"])))


def _before_gates(m: dict[str, Any]) -> None:
    """A manifest of schema 1, written before gates were recorded."""
    del m["gate"], m["notice"]
    m["schema_version"] = 1


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (_demo_gate, "recall judged by coverage only, not by iou"),
        (_before_gates, "the manifest records no gate"),
    ],
)
def test_blur_refuses_an_artifact_that_is_not_a_release_unless_allowed(
    artifact: Path,
    tmp_path: Path,
    photo: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[dict[str, Any]], None],
    why: str,
) -> None:
    folder = _copy(artifact, tmp_path / "tiny-1")
    edit_manifest(folder, edit)
    out = tmp_path / "out"
    code, err = _blur(capsys, photo, out, "--model", str(folder))
    _refused(code, err, out)
    assert f"not a release: {folder} (tiny version 1): " in err and why in err
    assert "pass --allow-demo" in err
    with caplog.at_level(logging.WARNING, logger="serving.runtime.artifact_set"):
        code, err = _blur(capsys, photo, out, "--model", str(folder), "--allow-demo")
    assert code == 0 and (out / photo.name).is_file()
    assert "which is NOT A RELEASE" in caplog.text and why in caplog.text


# ---------------------------------------------------------------------------------------------
# The classes the deployment requires


def _persons_only(m: dict[str, Any]) -> None:
    """The manifest of a model that detects persons only (as the Keypoint R-CNN does)."""
    m["classes"] = m["architecture"]["classes"] = ["person"]
    m["thresholds"] = {"person": m["thresholds"]["person"]}
    m["styles"] = {"person": m["styles"]["person"]}


def test_faces_and_plates_are_required_unless_the_deployment_says_otherwise(
    artifact: Path, tmp_path: Path
) -> None:
    persons = _copy(artifact, tmp_path / "persons-1")
    edit_manifest(persons, _persons_only)
    with pytest.raises(ArtifactError) as refused:
        Runtime.load([persons])
    message = str(refused.value)
    assert "no loaded model detects face, license_plate, which this deployment requires" in message
    assert f"loaded: {persons}: person)" in message
    assert [a.path for a in Runtime.load([persons], require=["person"]).artifacts] == [persons]
    # With a model that detects faces and plates beside it, the default is met.
    assert len(Runtime.load([persons, artifact]).artifacts) == 2


def test_blur_refuses_when_a_required_class_is_missing(
    artifact: Path, tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = _blur(capsys, photo, out, "--model", str(artifact), "--require", "face,dog")
    _refused(code, err, out)
    assert (
        "no loaded model detects dog, which this deployment requires (required: face, dog;" in err
    )
    assert f"loaded: {artifact}: face, person, license_plate, vehicle)" in err


def test_the_required_classes_come_from_the_environment_unless_given(artifact: Path) -> None:
    environ = {"ANONLAB_REQUIRE_CLASSES": "face, dog"}
    with pytest.raises(ArtifactError, match="no loaded model detects dog"):
        Runtime.load([artifact], environ=environ)
    assert Runtime.load([artifact], require=["face"], environ=environ).classes
    with pytest.raises(ArtifactError, match="--require ',' names no class"):
        Runtime.load([artifact], require=[","])


# ---------------------------------------------------------------------------------------------
# Pinned manifests


def test_pinned_artifacts_load_and_others_are_refused(artifact: Path, tmp_path: Path) -> None:
    sha = read_manifest(artifact)["manifest_sha256"]
    assert Runtime.load([artifact], pins=[sha.upper()]).artifacts[0].manifest_sha256 == sha
    with pytest.raises(ArtifactError) as refused:
        Runtime.load([artifact], pins=[WRONG_PIN])
    message = str(refused.value)
    assert f"{artifact} (manifest_sha256 {sha}) is not pinned" in message
    assert f"pin {WRONG_PIN} matches no loaded artifact" in message
    # A set of two where one was swapped for another export: the swapped one is named.
    models = tmp_path / "serving"
    _copy(artifact, models / "tiny-1")
    swapped = _copy(artifact, models / "tiny-2")
    edit_manifest(swapped, _set("version", "2"))
    with pytest.raises(
        ArtifactError, match=rf"{swapped} \(manifest_sha256 [0-9a-f]{{64}}\) is not"
    ):
        Runtime.load([models], pins=[sha])
    with pytest.raises(ArtifactError, match=r"'abc' is not a manifest_sha256 \(64 hex digits\)"):
        Runtime.load([artifact], pins=["abc"])


def test_blur_runs_only_the_pinned_artifacts(
    artifact: Path,
    tmp_path: Path,
    photo: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha = read_manifest(artifact)["manifest_sha256"]
    monkeypatch.setenv("ANONLAB_ARTIFACT_SHA256", f"{WRONG_PIN},{sha}")
    out = tmp_path / "out"
    code, err = _blur(capsys, photo, out, "--model", str(artifact))
    _refused(code, err, out)
    assert f"pin {WRONG_PIN} matches no loaded artifact" in err
    # --pin takes the place of the environment's pins.
    assert _blur(capsys, photo, out, "--model", str(artifact), "--pin", sha)[0] == 0
    assert (out / "photo.jpg").is_file()
