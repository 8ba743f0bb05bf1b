"""The composite artifact (`serving.runtime.composite`): several exported models run as one
anonymizer, loaded whole or not at all (`load_composite`, `artifact_set.load_composite_set`),
and run by the runtime and `anonlab blur` with the heads its keypoint member finds. The
anonymizer and its stand-in keypoint model: `tests.serving.composites`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from serving.cli import main as cli_main
from serving.runtime.artifact import load_artifact, manifest_digest
from serving.runtime.composite import COMPOSITE, MEMBERS, load_composite
from serving.runtime.errors import ArtifactError
from serving.runtime.heads import HEAD
from serving.runtime.pipeline import Runtime
from tests.serving.artifacts import CLASSES, DEMO_GATE, edit_manifest
from tests.serving.composites import (
    BACK_OF_HEAD,
    HEAD_THRESHOLD,
    PERSON_BOX,
    decoded,
    expected_head,
    image_with_a_face_from_behind,
    keypoint_member,
    png,
    read_composite,
    rewrite_composite,
    stand_in,
    write_composite,
)


@pytest.fixture(scope="module")
def members(shared_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    into = tmp_path_factory.mktemp("members")
    plain = shutil.copytree(shared_artifact, into / shared_artifact.name)
    return [plain, keypoint_member(shared_artifact, into)]


@pytest.fixture(scope="module")
def anonymizer(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-member anonymizer with heads; tests only read it (copy it to change it)."""
    return write_composite(tmp_path_factory.mktemp("anonymizer"), members)


@pytest.fixture
def copy(anonymizer: Path, tmp_path: Path) -> Path:
    return shutil.copytree(anonymizer, tmp_path / anonymizer.name)


@pytest.fixture
def standing_in(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(monkeypatch)


# --- loading and running --------------------------------------------------------------------


def test_a_composite_loads_with_its_members_and_their_roles(anonymizer: Path) -> None:
    composite = load_composite(anonymizer)
    assert [a.manifest.name for a in composite.members] == ["tiny", "tinykp"]
    assert composite.manifest_sha256 == read_composite(anonymizer)["manifest_sha256"]
    composition = composite.composition()
    assert composition.supplies == {**dict.fromkeys(CLASSES, "tiny"), HEAD: "tinykp"}
    # The classes in composite.json's order (sorted keys), the heads last.
    assert set(composition.classes) == {*CLASSES, HEAD} and composition.classes[-1] == HEAD
    assert composition.thresholds[HEAD] == HEAD_THRESHOLD
    assert composite.styles()[HEAD] == composite.styles()["face"]
    first_line = (anonymizer / COMPOSITE).read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith('{"notice": ')


def test_the_runtime_runs_a_composite_and_hides_a_head_found_by_keypoints(
    anonymizer: Path, standing_in: None
) -> None:
    runtime = Runtime.load([anonymizer], allow_demo=True)
    assert runtime.composite is not None
    assert runtime.classes == runtime.composite.composition().classes
    assert set(runtime.classes) == {*CLASSES, HEAD}
    raw = read_composite(anonymizer)
    [identity] = runtime.identity()
    assert (identity["name"], identity["manifest_sha256"], identity["release"]) == (
        "anonymizer",
        raw["manifest_sha256"],
        True,
    )
    assert [m["manifest_sha256"] for m in identity["members"]] == [
        m["manifest_sha256"] for m in raw["members"]
    ]

    before = image_with_a_face_from_behind()
    done = runtime.anonymize_bytes(png(before))
    found = done.detections_json()
    assert [d["box"] for d in found if d["class"] == HEAD] == [expected_head(anonymizer)]
    # The keypoint model's person is not boxed: the Mask R-CNN supplies persons.
    assert list(PERSON_BOX) not in [d["box"] for d in found]
    x0, y0, x1, y1 = BACK_OF_HEAD
    assert runtime.hidden_mask(done, full=True)[y0:y1, x0:x1].all()
    after = decoded(done.data)
    assert (after[y0:y1, x0:x1] != before[y0:y1, x0:x1]).any(axis=2).all()


def test_a_composite_of_one_member_without_heads_runs_its_real_model(
    shared_artifact: Path, tmp_path: Path
) -> None:
    folder = write_composite(tmp_path, [shared_artifact], heads=False)
    runtime = Runtime.load([folder], allow_demo=True)
    assert sorted(runtime.classes) == sorted(CLASSES)
    single = Runtime.load([shared_artifact])
    image = png(image_with_a_face_from_behind())
    # The same model at the same thresholds hides the same regions as the artifact alone.
    done, alone = runtime.anonymize_bytes(image), single.anonymize_bytes(image)
    assert done.detections_json() == alone.detections_json()
    assert done.data == alone.data


def test_a_single_artifact_still_loads_on_its_own(shared_artifact: Path) -> None:
    runtime = Runtime.load([shared_artifact])
    assert runtime.composite is None and runtime.classes == CLASSES
    assert [i["manifest_sha256"] for i in runtime.identity()] == [
        load_artifact(shared_artifact).manifest_sha256
    ]
    done = runtime.anonymize_bytes(png(image_with_a_face_from_behind()))
    assert {d["class"] for d in done.detections_json()} <= set(CLASSES)


# --- refused --------------------------------------------------------------------------------


def test_an_edited_composite_json_is_refused(copy: Path) -> None:
    raw = read_composite(copy)
    raw["thresholds"]["face"] = 0.9
    rewrite_composite(copy, raw)
    with pytest.raises(ArtifactError, match=r"composite\.json: the manifest was altered after"):
        Runtime.load([copy], allow_demo=True)


def test_a_recomputed_edit_loads_but_not_under_the_pin_of_the_original(
    anonymizer: Path, copy: Path
) -> None:
    pin = read_composite(anonymizer)["manifest_sha256"]
    Runtime.load([copy], pins=[pin])  # the copy is the anonymizer pinned
    raw = read_composite(copy)
    raw["thresholds"][HEAD] = 0.75
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    rewrite_composite(copy, {**body, "manifest_sha256": manifest_digest(body)})
    assert load_composite(copy).composition().thresholds[HEAD] == 0.75
    with pytest.raises(ArtifactError, match=rf"the anonymizer is not the pinned one: .* {pin}"):
        Runtime.load([copy], pins=[pin])
    with pytest.raises(ArtifactError, match="the anonymizer is not the pinned one"):
        Runtime.load([copy], environ={"ANONLAB_ARTIFACT_SHA256": pin})


@pytest.mark.parametrize(
    ("heads", "message"),
    [
        ({"spread": -1}, r"head spread must be a number 0\.0 to 10\.0, got -1"),
        ({"keypoints": 5}, r"head keypoints must be a non-empty list of names, got 5"),
        ({"keypoints": ["nose", "chin"]}, r"the keypoint model has no keypoint chin"),
        ({"radius": 3}, r"head key\(s\) \['radius'\] not allowed"),
    ],
)
def test_a_head_geometry_the_runtime_cannot_use_is_refused_naming_it(
    copy: Path, heads: dict, message: str
) -> None:
    # Edited as someone who knows the format would (manifest_sha256 recomputed): the values
    # themselves are refused.
    raw = read_composite(copy)
    raw["heads"] = {**raw["heads"], **heads}
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    rewrite_composite(copy, {**body, "manifest_sha256": manifest_digest(body)})
    with pytest.raises(ArtifactError, match=rf"anonymizer-1/composite\.json: {message}"):
        Runtime.load([copy], allow_demo=True)


def test_pins_name_the_composites_manifest_sha256_not_its_members(anonymizer: Path) -> None:
    raw = read_composite(anonymizer)
    members = [m["manifest_sha256"] for m in raw["members"]]
    with pytest.raises(ArtifactError, match=r"Pin the manifest_sha256 of its composite\.json"):
        Runtime.load([anonymizer], pins=members)
    with pytest.raises(ArtifactError, match="the anonymizer is not the pinned one"):
        Runtime.load([anonymizer], pins=[raw["manifest_sha256"], members[0]])
    runtime = Runtime.load([anonymizer], pins=[raw["manifest_sha256"].upper()])
    assert runtime.composite is not None


def test_a_swapped_member_is_refused_naming_it(copy: Path, tmp_path: Path) -> None:
    # Another tiny keypoint model, its manifest in order, put in the place of the member.
    other = tmp_path / "other"
    swapped = keypoint_member(copy / MEMBERS / "tiny-1", other)
    edit_manifest(swapped, lambda m: m["thresholds"].update(person=0.2))
    shutil.rmtree(copy / MEMBERS / "tinykp-1")
    shutil.copytree(swapped, copy / MEMBERS / "tinykp-1")
    with pytest.raises(
        ArtifactError,
        match=r"member members/tinykp-1 has manifest_sha256 .*: not the member it was exported",
    ):
        Runtime.load([copy], allow_demo=True)


def test_an_altered_or_missing_member_or_card_is_refused_naming_the_file(
    anonymizer: Path, copy: Path
) -> None:
    onnx = copy / MEMBERS / "tiny-1" / "model.onnx"
    original = onnx.read_bytes()
    onnx.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactError, match=r"tiny-1: model\.onnx was altered or corrupted"):
        load_composite(copy)
    onnx.write_bytes(original)
    card = copy / "MODEL_CARD.md"
    card.write_text("# another anonymizer\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"anonymizer-1: MODEL_CARD\.md was altered"):
        load_composite(copy)
    card.unlink()
    with pytest.raises(ArtifactError, match=r"MODEL_CARD\.md is missing; copy the whole"):
        load_composite(copy)
    shutil.copyfile(anonymizer / "MODEL_CARD.md", card)
    load_composite(copy)
    shutil.rmtree(copy / MEMBERS / "tinykp-1")
    with pytest.raises(ArtifactError, match=r"tinykp-1: no such artifact folder"):
        load_composite(copy)


def test_a_composite_that_is_not_a_release_needs_allow_demo(
    members: list[Path], tmp_path: Path
) -> None:
    demo = write_composite(tmp_path, members, gate=DEMO_GATE)
    with pytest.raises(
        ArtifactError,
        match=r"not a release: .*anonymizer-1 \(anonymizer version 1\): .*--allow-demo",
    ):
        Runtime.load([demo])
    runtime = Runtime.load([demo], allow_demo=True)
    assert runtime.identity()[0]["release"] is False
    assert read_composite(demo)["notice"].startswith("NOT A RELEASE")


def test_a_composite_runs_on_its_own(anonymizer: Path, shared_artifact: Path) -> None:
    for paths in ([anonymizer, shared_artifact], [shared_artifact, anonymizer]):
        with pytest.raises(
            ArtifactError, match=r"an anonymizer \(composite\.json\) runs on its own"
        ):
            Runtime.load(paths, allow_demo=True)


@pytest.mark.parametrize("beside", [True, False])
def test_a_folder_of_artifacts_holding_a_composite_says_to_name_it_on_its_own(
    anonymizer: Path, shared_artifact: Path, tmp_path: Path, beside: bool
) -> None:
    # artifacts/serving/ with the anonymizer, beside a single artifact or alone.
    serving = tmp_path / "serving"
    shutil.copytree(anonymizer, serving / anonymizer.name)
    if beside:
        shutil.copytree(shared_artifact, serving / shared_artifact.name)
    with pytest.raises(
        ArtifactError, match=r"anonymizer-1/ \(an anonymizer: name it on its own, --model DIR"
    ):
        Runtime.load([serving], allow_demo=True)


def test_a_composite_lacking_a_required_class_is_refused(anonymizer: Path) -> None:
    with pytest.raises(ArtifactError, match=r"the anonymizer hides face, .*, not tattoo"):
        Runtime.load([anonymizer], require=["face,tattoo"])
    Runtime.load([anonymizer], require=["face,person"])


# --- anonlab blur ---------------------------------------------------------------------------


def test_blur_with_a_composite_lists_what_it_hid_by_class(
    anonymizer: Path, standing_in: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = image_with_a_face_from_behind()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "street.png").write_bytes(png(before))
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--model", str(anonymizer), "--out", str(out)]
    assert cli_main([*argv, "--sidecar"]) == 0
    assert "anonymized 1 image" in capsys.readouterr().out
    sidecar = json.loads((out / "street.png.json").read_text(encoding="utf-8"))
    assert sidecar["classes"] == load_composite(anonymizer).composition().classes
    assert set(sidecar["classes"]) == {*CLASSES, HEAD}
    by_class: dict[str, list[list[float]]] = {}
    for d in sidecar["detections"]:
        by_class.setdefault(d["class"], []).append(d["box"])
    assert by_class[HEAD] == [expected_head(anonymizer)]
    assert set(by_class) <= set(sidecar["classes"])
    after = cv2.cvtColor(cv2.imread(str(out / "street.png")), cv2.COLOR_BGR2RGB)
    x0, y0, x1, y1 = BACK_OF_HEAD
    assert (after[y0:y1, x0:x1] != before[y0:y1, x0:x1]).any(axis=2).all()
