"""export of the anonymizer: the tiny Mask R-CNN and the tiny Keypoint R-CNN exported by
`run_export` from hand-built metrics.json (its `anonymizer` entry) and verdict.json, written as
one composite artifact that the runtime loads, runs with heads, and refuses once altered."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from data.atomic import read_json
from data.errors import AnonlabError
from serving.export import ExportSetup, run_export
from serving.runtime.artifact import load_artifact, manifest_digest
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import load_composite
from serving.runtime.errors import ArtifactError
from serving.runtime.pipeline import Runtime
from serving.runtime.release import release_notice, release_problems
from tests.images import texture
from tests.serving.artifacts import (
    DEMO_GATE,
    KEYPOINT_NAME,
    NAME,
    edit_manifest,
    export_setup,
    tiny_keypoint_dir,
    tiny_model_dir,
    write_composite_validation,
    write_validated,
)

VERSIONS = {NAME: "3", KEYPOINT_NAME: "2"}


def _composite_json(folder: Path) -> dict:
    return json.loads((folder / "composite.json").read_text(encoding="utf-8"))


def _write_composite_json(folder: Path, manifest: dict) -> None:
    """composite.json with `manifest`'s values and a recomputed manifest_sha256, as someone who
    knows the format would write it."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = manifest_digest(body)
    (folder / "composite.json").write_text(json.dumps(body), encoding="utf-8")


def test_export_writes_the_anonymizer_as_one_composite_artifact(shared_composite: Path) -> None:
    serving = shared_composite.parent
    # The members' own artifacts, unchanged, and the anonymizer named for their versions.
    assert sorted(p.name for p in serving.iterdir()) == ["anonymizer-3+2", "tiny-3", "tiny_heads-2"]
    assert sorted(p.name for p in shared_composite.iterdir()) == [
        "MODEL_CARD.md",
        "composite.json",
        "members",
    ]
    text = (shared_composite / "composite.json").read_text(encoding="utf-8")
    assert text.startswith('{"notice": "RELEASE GATE: ')
    m = _composite_json(shared_composite)
    assert (m["name"], m["version"], m["kind"]) == ("anonymizer", "3+2", "composite")
    metrics = read_json(serving.parent / "eval" / "metrics.json")
    entry = metrics["anonymizer"]
    # Each member: a copy of its artifact, byte for byte, named by its manifest's sha256.
    for member, version in VERSIONS.items():
        (listed,) = [e for e in m["members"] if e["name"] == member]
        copy = shared_composite / listed["folder"]
        assert listed["folder"] == f"members/{member}-{version}" and listed["version"] == version
        original = serving / f"{member}-{version}"
        assert {p.name: p.read_bytes() for p in copy.iterdir()} == {
            p.name: p.read_bytes() for p in original.iterdir()
        }
        assert listed["manifest_sha256"] == load_artifact(original).manifest_sha256
    assert [e["name"] for e in m["members"]] == [NAME, KEYPOINT_NAME]  # train.models order
    # What evaluate ran: supplies, every threshold (the head's included), styles, head geometry.
    assert m["supplies"] == entry["supplies"] and m["supplies"]["head"] == KEYPOINT_NAME
    assert m["thresholds"] == {c: t["threshold"] for c, t in entry["thresholds"].items()}
    assert m["thresholds"]["head"] == entry["thresholds"]["head"]["threshold"]
    assert m["styles"] == entry["styles"] and m["heads"] == entry["heads"]
    assert m["recall"]["holdout"]["face"] == {"iou": 0.9, "coverage": 0.97, "n": 30}
    assert m["gate"]["targets"]["face"] == 0.95 and m["notice"] == text.split('"')[3]
    assert m["provenance"]["metrics_sha256"] == file_sha256(serving.parent / "eval/metrics.json")
    assert m["files"] == {"MODEL_CARD.md": file_sha256(shared_composite / "MODEL_CARD.md")}

    loaded = load_composite(shared_composite)
    assert [a.manifest.name for a in loaded.members] == [NAME, KEYPOINT_NAME]
    assert loaded.composition().thresholds["head"] == m["thresholds"]["head"]

    card = (shared_composite / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.splitlines()[0] == m["notice"]
    assert "# anonymizer, version 3+2" in card
    hides = "face, license plate, person and vehicle"
    assert f"| tiny | 3 | maskrcnn | {hides} | `members/tiny-3` |" in card
    assert "| tiny_heads | 2 | keypointrcnn | head regions (from its persons' head" in card
    head = entry["thresholds"]["head"]
    assert f"| head | tiny_heads | {head['threshold']:.3f} | 0.95 | " in card
    assert "| face | small | 12 | 0.900 [0.800, 0.950] | 0.970 [0.900, 0.990] |" in card
    assert "### Faces only the heads hid" in card and "- holdout: 4" in card
    assert "validate passed this anonymizer when" in card


def test_the_keypoint_members_onnx_check_compared_its_keypoints(shared_composite: Path) -> None:
    parity = load_artifact(shared_composite.parent / f"{KEYPOINT_NAME}-2").manifest.parity
    assert parity["compared"] >= parity["bounds"]["min_compared"]
    # Keypoints scoring keypoint_score or more were compared, within keypoint_px.
    assert parity["keypoints"] > 0 and parity["bounds"]["keypoint_score"] == 0.0
    assert parity["max_keypoint_px"] <= parity["bounds"]["keypoint_px"]


def test_the_runtime_runs_the_composite_and_hides_the_heads(shared_composite: Path) -> None:
    runtime = Runtime.load([shared_composite])
    assert runtime.identity()[0]["version"] == "3+2"
    assert runtime.classes[-1] == "head"
    buffer = io.BytesIO()
    Image.fromarray(texture(256, 192, seed=3)).save(buffer, format="PNG")
    decoded = runtime.decode(buffer.getvalue())
    dets = runtime.detect(decoded.rgb)
    heads = dets.boxes[dets.labels == runtime.classes.index("head") + 1]
    # The random keypoint model scores its persons about 0.5: above the head threshold (0.2).
    assert len(heads) > 0
    done = runtime.finish(decoded, dets)
    hidden = runtime.hidden_mask(done, full=True)
    centres = [(int((x0 + x1) / 2), int((y0 + y1) / 2)) for x0, y0, x1, y1 in heads]
    inside = [(x, y) for x, y in centres if 0 <= x < done.width and 0 <= y < done.height]
    assert inside and all(hidden[y, x] for x, y in inside), "a head was left visible"


def test_an_anonymizer_under_a_weaker_gate_runs_only_when_told(
    shared_composite: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(shared_composite, tmp_path / shared_composite.name))
    m = _composite_json(folder)
    m["gate"] = DEMO_GATE.to_dict()
    m["notice"] = release_notice(release_problems(DEMO_GATE))
    _write_composite_json(folder, m)
    with pytest.raises(ArtifactError, match=r"not a release: .*anonymizer version 3\+2"):
        Runtime.load([folder])
    assert Runtime.load([folder], allow_demo=True).identity()[0]["release"] is False


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("threshold", "the manifest was altered after export"),
        ("card", r"MODEL_CARD\.md was altered or corrupted"),
        ("member_weights", r"weights\.safetensors was altered or corrupted"),
        ("member_manifest", r"member members/tiny-3 has manifest_sha256 .*not the member it was"),
    ],
)
def test_an_altered_composite_is_refused(
    shared_composite: Path, tmp_path: Path, tamper: str, message: str
) -> None:
    folder = Path(shutil.copytree(shared_composite, tmp_path / shared_composite.name))
    if tamper == "threshold":
        m = _composite_json(folder)
        m["thresholds"]["head"] = 0.9  # someone "tunes" the head threshold by hand
        (folder / "composite.json").write_text(json.dumps(m), encoding="utf-8")
    elif tamper == "card":
        with (folder / "MODEL_CARD.md").open("a", encoding="utf-8") as card:
            card.write("\nrecall 1.0 everywhere\n")
    elif tamper == "member_weights":
        weights = folder / "members" / f"{KEYPOINT_NAME}-2" / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    else:  # a member whose manifest is consistent, but not the one the anonymizer names
        edit_manifest(folder / "members" / "tiny-3", lambda m: m["thresholds"].update(face=0.5))
    with pytest.raises(ArtifactError, match=message):
        load_composite(folder)
    with pytest.raises(ArtifactError, match=message):
        Runtime.load([folder])


def _validated_project(tmp_path: Path) -> tuple[ExportSetup, dict[str, str], dict]:
    """The two tiny models, validated: the setup, their weights' sha256, metrics.json."""
    setup = replace(export_setup(tmp_path), models=[NAME, KEYPOINT_NAME])
    tiny_model_dir(setup.artifacts)
    tiny_keypoint_dir(setup.artifacts, seed=1)
    shas = write_composite_validation(setup)
    return setup, shas, read_json(setup.artifacts / "eval" / "metrics.json")


def test_export_refuses_metrics_without_the_validated_anonymizer(tmp_path: Path) -> None:
    setup, shas, metrics = _validated_project(tmp_path)
    # An older evaluate: no anonymizer entry, though validate passed the file.
    older = {k: v for k, v in metrics.items() if k != "anonymizer"}
    write_validated(setup, older, VERSIONS, DEMO_GATE)
    with pytest.raises(AnonlabError, match=r"has no `anonymizer` entry \(written by an older"):
        run_export(setup)
    assert not (setup.artifacts / "serving").exists()
    # An anonymizer that ran other weights than the ones validate passed.
    other = json.loads(json.dumps(metrics))
    other["anonymizer"]["members"][KEYPOINT_NAME]["weights_sha256"] = "0" * 64
    write_validated(setup, other, VERSIONS, DEMO_GATE)
    with pytest.raises(AnonlabError) as refused:
        run_export(setup)
    assert (
        f"the anonymizer ran {KEYPOINT_NAME} with weights sha256 {'0' * 64}, but the weights "
        f"validate passed have sha256 {shas[KEYPOINT_NAME]}"
    ) in str(refused.value)
    assert not (setup.artifacts / "serving").exists()


def test_export_publishes_no_anonymizer_the_runtime_would_refuse(tmp_path: Path) -> None:
    setup, _, metrics = _validated_project(tmp_path)
    # Faces styled otherwise than the member that supplies them hides them.
    metrics["anonymizer"]["styles"]["face"] = {**metrics["anonymizer"]["styles"]["face"]}
    metrics["anonymizer"]["styles"]["face"]["shape"] = "box"
    write_validated(setup, metrics, VERSIONS, DEMO_GATE)
    with pytest.raises(AnonlabError, match=r"the runtime would refuse this anonymizer: .*styles"):
        run_export(setup)
    assert not (setup.artifacts / "serving").exists()
    assert not list(setup.artifacts.glob(".serving*"))
    assert not any(p.name.startswith("anonymizer") for p in setup.artifacts.rglob("*"))
