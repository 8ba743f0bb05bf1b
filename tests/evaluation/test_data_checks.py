"""The data checks of `anonlab validate` on a real prepared folder, clean and with injected faults.

The folder is the synthetic pipeline's output (collect, review, annotate pull, prepare: 16
frames in four drives, drive-001 held out); each test copies it and breaks one thing.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data.stage_paths import MANIFEST
from evaluation.data_checks import check_dataset
from evaluation.data_checks.checks import ERROR, WARNING, Check
from tests.prepared import prepared_project

DATA = [
    "collect.synthetic.count=16",
    "collect.synthetic.frames_per_session=4",
    "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]",
]
LEAK_HAMMING = 6
NAMES = [
    "schema",
    "geometry.boxes_inside",
    "geometry.masks_non_empty",
    "geometry.mask_area",
    "geometry.mask_bbox",
    "geometry.keypoints_in_image",
    "geometry.keypoints_in_person",
    "geometry.keypoints_count",
    "leakage.hashes",
    "leakage",
    "shift.train",
    "shift.val",
    "shift.ref-holdout",
]

Coco = dict[str, Any]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """artifacts/ of a project that went through collect, review, annotate pull and prepare."""
    return prepared_project(tmp_path_factory.mktemp("data-checks"), DATA).artifacts


@pytest.fixture
def copy(artifacts: Path, tmp_path: Path) -> Path:
    """A writable artifacts/ with its own prepared/ and reviewed/; raw/ is shared (read only)."""
    out = tmp_path / "artifacts"
    shutil.copytree(artifacts / "prepared", out / "prepared")
    shutil.copytree(artifacts / "reviewed", out / "reviewed")
    (out / "raw").symlink_to(artifacts / "raw")
    return out


def run(artifacts: Path, baseline: dict | None = None, **options: Any) -> dict[str, Check]:
    checks = check_dataset(
        artifacts / "prepared",
        artifacts / "reviewed",
        leak_hamming=options.pop("leak_hamming", LEAK_HAMMING),
        baseline_stats=baseline,
        **options,
    )
    return {c.name: c for c in checks}


def failing(checks: dict[str, Check]) -> set[str]:
    return {name for name, c in checks.items() if not c.passed}


def read(artifacts: Path, file: str) -> Coco:
    return json.loads((artifacts / "prepared" / file).read_text(encoding="utf-8"))


def write(artifacts: Path, file: str, coco: Coco) -> None:
    (artifacts / "prepared" / file).write_text(json.dumps(coco), encoding="utf-8")


def stats(artifacts: Path) -> dict:
    return json.loads((artifacts / "prepared" / "stats.json").read_text(encoding="utf-8"))


def size_of(coco: Coco, ann: dict) -> tuple[int, int]:
    image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    return image["width"], image["height"]


def vehicle(coco: Coco) -> dict:
    """The first vehicle with room to move right by 5 px (boxes of persons hold keypoints)."""
    cid = next(c["id"] for c in coco["categories"] if c["name"] == "vehicle")
    return next(
        a
        for a in coco["annotations"]
        if a["category_id"] == cid and a["bbox"][0] + a["bbox"][2] + 5 < size_of(coco, a)[0]
    )


def person(coco: Coco) -> dict:
    """The first person with all keypoints labelled."""
    return next(a for a in coco["annotations"] if a.get("num_keypoints") == 5)


def test_a_clean_prepared_folder_passes_every_check(artifacts: Path) -> None:
    checks = run(artifacts, stats(artifacts))
    assert list(checks) == NAMES
    assert not failing(checks), [c.message for c in checks.values() if not c.passed]
    for check in checks.values():
        json.dumps(check.details, allow_nan=False)
        # A few stray keypoints would only warn (see the test below); shift only ever warns.
        warns = check.name.startswith("shift.") or check.name == "geometry.keypoints_in_person"
        assert check.severity == (WARNING if warns else ERROR)
        assert check.message.startswith(check.name + ": ")
    # Every check had something to judge.
    files = checks["schema"].details["files"]
    assert set(files) == {"train.json", "val.json", "refs/holdout.json"}
    masks = checks["geometry.masks_non_empty"].details["masks"]
    assert masks == sum(f["annotations"] for f in files.values()) > 50
    assert checks["geometry.mask_area"].details["masks"] == masks
    assert checks["geometry.keypoints_in_person"].details["keypoints"] > 50
    assert checks["leakage"].details["images"]["ref-holdout"] > 0
    shift = checks["shift.train"].details
    assert shift["objects"]["old"] == shift["objects"]["new"] > 0
    assert all(row["relative_change"] in (0, None) for row in shift["table"])


def test_without_a_baseline_shift_passes_with_a_note(artifacts: Path) -> None:
    checks = run(artifacts, None)
    for name in ("shift.train", "shift.val", "shift.ref-holdout"):
        assert checks[name].passed and "no baseline" in checks[name].message


def _box_outside(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["bbox"][0] = size_of(coco, ann)[0] + 50.0
    return "leaves the", ann


def _box_nan(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["bbox"][2] = math.nan
    return "bbox must be 4 finite numbers", ann


def _empty_mask(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    width, height = size_of(coco, ann)
    rle = mask_utils.encode(np.zeros((height, width), np.uint8, order="F"))
    ann["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
    return "no pixel", ann


def _area_mismatch(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["area"] = ann["area"] * 1.5 + 2
    return f"area {ann['area']:g}", ann


def _bbox_off_its_mask(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["bbox"][0] += 5
    return "mask extent", ann


def _rle_too_short(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    width, height = size_of(coco, ann)
    mask = np.zeros((height, width), np.uint8, order="F")
    mask[:10, :10] = 1
    rle = mask_utils.encode(mask[:, : width - 1].copy(order="F"))  # a column short
    ann["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
    return f"RLE covers {height * (width - 1)} pixels, the image {height * width}", ann


def _polygon_far_away(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    # pycocotools would rasterise this for minutes: the check must refuse it first.
    ann["segmentation"] = [[10.0, 10.0, 2e8, 3e8, 20.0, 20.0]]
    return "far outside", ann


def _keypoint_far_from_its_person(coco: Coco) -> tuple[str, dict]:
    ann = person(coco)
    x, _, w, _ = ann["bbox"]
    width = size_of(coco, ann)[0]
    ann["keypoints"][0] = x + w + 100 if x + w + 100 < width else x - 100
    return "nose at", ann


def _keypoint_outside_the_image(coco: Coco) -> tuple[str, dict]:
    ann = person(coco)
    ann["keypoints"][3] = size_of(coco, ann)[0] + 50.0
    return "left_eye at", ann


def _keypoints_missing(coco: Coco) -> tuple[str, dict]:
    ann = person(coco)
    del ann["keypoints"][-3:]
    return "12 keypoint values", ann


def _num_keypoints_wrong(coco: Coco) -> tuple[str, dict]:
    ann = person(coco)
    ann["num_keypoints"] = 2
    return "num_keypoints 2", ann


def _unknown_category(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["category_id"] = 99
    return "category_id 99", ann


def _annotation_on_a_missing_image(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    ann["image_id"] = 9999
    return "image_id 9999", ann


def _duplicate_annotation_id(coco: Coco) -> tuple[str, dict]:
    first, ann = coco["annotations"][:2]
    ann["id"] = first["id"]
    return "duplicate annotation id", ann


def _no_area(coco: Coco) -> tuple[str, dict]:
    ann = vehicle(coco)
    del ann["area"]
    return "missing area", ann


@pytest.mark.parametrize(
    ("inject", "check", "also"),
    [
        (_box_outside, "geometry.boxes_inside", {"geometry.mask_bbox"}),
        (_box_nan, "schema", set()),
        (_empty_mask, "geometry.masks_non_empty", set()),
        (_area_mismatch, "geometry.mask_area", set()),
        (_bbox_off_its_mask, "geometry.mask_bbox", set()),
        (_rle_too_short, "geometry.masks_non_empty", set()),
        (_polygon_far_away, "geometry.masks_non_empty", set()),
        (_keypoint_far_from_its_person, "geometry.keypoints_in_person", set()),
        (
            _keypoint_outside_the_image,
            "geometry.keypoints_in_image",
            {"geometry.keypoints_in_person"},
        ),
        (_keypoints_missing, "geometry.keypoints_count", set()),
        (_num_keypoints_wrong, "geometry.keypoints_count", set()),
        (_unknown_category, "schema", set()),
        (_annotation_on_a_missing_image, "schema", set()),
        (_duplicate_annotation_id, "schema", set()),
        (_no_area, "schema", set()),
    ],
)
def test_a_broken_annotation_fails_its_check_and_is_named(
    copy: Path, inject: Callable[[Coco], tuple[str, dict]], check: str, also: set[str]
) -> None:
    coco = read(copy, "train.json")
    problem, ann = inject(coco)
    write(copy, "train.json", coco)
    checks = run(copy)
    assert failing(checks) == {check, *also}
    message = checks[check].message
    where = re.escape(f"train.json annotation {ann['id']} (image {ann['image_id']}): ")
    assert re.search(where + "[^;]*" + re.escape(problem), message), message
    for name in (check, *also):
        assert checks[name].details["count"] == 1
        assert checks[name].details["first"][0]["annotation_id"] == ann["id"]
        assert f"train.json annotation {ann['id']} " in checks[name].message


def test_many_offenders_are_counted_and_the_first_twenty_named(copy: Path) -> None:
    coco = read(copy, "train.json")
    for ann in coco["annotations"]:
        ann["area"] = 2 * ann["area"] + 1
    write(copy, "train.json", coco)
    check = run(copy)["geometry.mask_area"]
    n = len(coco["annotations"])
    assert check.details["count"] == n > 20
    assert [o["annotation_id"] for o in check.details["first"]] == list(range(1, 21))
    assert check.message.count("train.json annotation") == 3
    assert f"(and {n - 3} more)" in check.message


def test_rle_totals_agree_with_the_single_string_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.data_checks import geometry as data_checks
    from training.masks import rle_counts

    rng = np.random.default_rng(0)
    strings = []
    for _ in range(300):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.random()
        strings.append(mask_utils.encode(np.asfortranarray(mask, np.uint8))["counts"].decode())
    strings += ["", "n", "0@", "1", "0"]  # empty, unfinished, a negative run, 1 run, 0 run
    monkeypatch.setattr(data_checks, "_RLE_CHUNK", 500)  # many chunks
    totals, valid = data_checks._rle_totals(strings)
    for k, string in enumerate(strings):
        try:
            runs = rle_counts(string)
            ok = len(runs) > 0 and bool((runs >= 0).all())
        except ValueError:
            ok = False
        assert valid[k] == ok, string
        if ok:
            assert totals[k] == runs.sum(), string
    assert not valid[-5:-2].any() and valid[-2:].all()


def test_a_stray_keypoint_warns_and_many_are_an_error(copy: Path) -> None:
    coco = read(copy, "train.json")
    _keypoint_far_from_its_person(coco)
    write(copy, "train.json", coco)
    assert run(copy)["geometry.keypoints_in_person"].severity == WARNING

    # Keypoints left in source-image coordinates in a tile: every person's are off.
    for ann in coco["annotations"]:
        if ann.get("keypoints"):
            ann["keypoints"] = [v + 150 * (k % 3 == 1) for k, v in enumerate(ann["keypoints"])]
    write(copy, "train.json", coco)
    check = run(copy)["geometry.keypoints_in_person"]
    assert not check.passed and check.severity == ERROR
    assert check.details["share"] > 0.3


def test_a_duplicate_image_id_and_a_missing_image_file_are_schema_errors(copy: Path) -> None:
    coco = read(copy, "val.json")
    first, second = coco["images"][:2]
    coco["images"].append({**second, "id": first["id"]})
    write(copy, "val.json", coco)
    gone = read(copy, "train.json")["images"][3]
    (copy / "prepared" / gone["file_name"]).unlink()

    check = run(copy)["schema"]
    assert not check.passed
    assert check.details["count"] == 2
    assert f"val.json image {first['id']}: duplicate image id" in check.message
    assert f"train.json image {gone['id']}: file {gone['file_name']} not found" in check.message


def test_categories_must_be_the_same_in_every_file(copy: Path) -> None:
    coco = read(copy, "refs/holdout.json")
    coco["categories"][0]["name"] = "head"
    write(copy, "refs/holdout.json", coco)
    check = run(copy)["schema"]
    assert not check.passed
    assert "refs/holdout.json: categories ['head'," in check.message
    assert "differ from train.json's ['face'," in check.message


def test_a_file_that_is_not_json_fails_schema_and_the_rest_still_runs(copy: Path) -> None:
    (copy / "prepared" / "val.json").write_text("{", encoding="utf-8")
    checks = run(copy)
    assert failing(checks) == {"schema"}
    assert "val.json: not readable JSON" in checks["schema"].message
    assert list(checks) == [n for n in NAMES if n != "shift.val"]


def _whole_image(artifacts: Path, tile: dict, new_id: int) -> dict:
    """A reference-set image entry for the whole source image of a train `tile`."""
    source = tile["source_file_name"]
    with Image.open(artifacts / source) as image:
        width, height = image.size
    return {
        "id": new_id,
        "file_name": "../" + source,
        "width": width,
        "height": height,
        "sha256": tile["sha256"],
    }


def test_a_train_image_copied_into_a_reference_set_is_a_leak(copy: Path) -> None:
    train = read(copy, "train.json")
    image = train["images"][1]
    refs = read(copy, "refs/holdout.json")
    new_id = max(i["id"] for i in refs["images"]) + 1
    refs["images"].append(_whole_image(copy, image, new_id))
    write(copy, "refs/holdout.json", refs)

    checks = run(copy)
    assert failing(checks) == {"leakage"}
    check = checks["leakage"]
    first_tile = min(i["id"] for i in train["images"] if i["sha256"] == image["sha256"])
    assert f"train.json image {first_tile}: identical (0 bits) to refs/holdout.json image " in (
        check.message
    )
    assert check.details["first"][0]["reference_image_id"] == new_id


def _manifest(artifacts: Path) -> list[dict]:
    lines = (artifacts / "reviewed" / MANIFEST).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _write_manifest(artifacts: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (artifacts / "reviewed" / MANIFEST).write_text(text, encoding="utf-8")


def test_a_near_duplicate_within_leak_hamming_is_a_leak(copy: Path) -> None:
    val_image = read(copy, "val.json")["images"][0]
    ref_image = read(copy, "refs/holdout.json")["images"][0]
    rows = _manifest(copy)
    phash = next(r for r in rows if r["sha256"] == val_image["sha256"])["extra"]["review"]["phash"]
    ref_row = next(r for r in rows if r["sha256"] == ref_image["sha256"])
    ref_row["extra"]["review"]["phash"] = f"{int(phash, 16) ^ 0b101:016x}"  # 2 bits apart
    _write_manifest(copy, rows)

    check = run(copy)["leakage"]
    assert not check.passed
    assert f"val.json image {val_image['id']}: near-duplicate (2 bits) to " in check.message
    assert f"refs/holdout.json image {ref_image['id']}" in check.message
    assert run(copy, leak_hamming=1)["leakage"].passed


def test_an_image_without_a_phash_is_reported(copy: Path) -> None:
    image = read(copy, "train.json")["images"][0]
    _write_manifest(copy, [r for r in _manifest(copy) if r["sha256"] != image["sha256"]])
    checks = run(copy)
    assert failing(checks) == {"leakage.hashes"}
    message = checks["leakage.hashes"].message
    assert f"train.json image {image['id']}: sha256 {image['sha256'][:12]}" in message


def test_a_missing_reviewed_manifest_fails_leakage(copy: Path) -> None:
    (copy / "reviewed" / MANIFEST).unlink()
    checks = run(copy)
    assert failing(checks) == {"leakage.hashes", "leakage"}
    assert "run `anonlab review`" in checks["leakage.hashes"].message


def test_an_external_reference_set_is_hashed_from_its_files(copy: Path) -> None:
    train = read(copy, "train.json")
    image = train["images"][1]
    external = copy / "external"
    external.mkdir()
    # Re-encoded: another sha256, so only its pHash (computed here, not reviewed) can match.
    with Image.open(copy / image["source_file_name"]) as source:
        source.save(external / "frame.jpg", quality=80)
    refs = read(copy, "refs/holdout.json")
    entry = {"id": 1, "file_name": "../external/frame.jpg", "width": 640, "height": 480}
    write(copy, "refs/external.json", {**refs, "images": [entry], "annotations": []})

    checks = run(copy)
    assert failing(checks) == {"leakage"}
    assert checks["leakage.hashes"].details["hashed_from_files"] == 1
    first_tile = min(i["id"] for i in train["images"] if i["sha256"] == image["sha256"])
    assert re.search(
        rf"train.json image {first_tile}: near-duplicate \(\d bits\) to refs/external.json image 1",
        checks["leakage"].message,
    ), checks["leakage"].message
    assert checks["shift.ref-external"].passed


def test_a_big_class_shift_against_the_baseline_warns(artifacts: Path) -> None:
    # Move 15 tiny persons to small ones: the total stays, so only these two shares move.
    baseline = stats(artifacts)
    persons = baseline["train"]["objects"]["person"]
    assert persons["tiny"] == 20
    persons["tiny"] -= 15
    persons["small"] += 15
    checks = run(artifacts, baseline)
    assert failing(checks) == {"shift.train"}
    check = checks["shift.train"]
    assert check.severity == WARNING
    assert check.details["count"] == 2
    assert "shift.train: 2 class/bucket share(s) moved by more than 50%" in check.message
    assert "person/tiny share 0.047 -> 0.187 (+300%); person/small share" in check.message
    (row,) = (r for r in check.details["table"] if r["class"] == "person" and r["bucket"] == "tiny")
    assert row["flagged"] and (row["old"], row["new"]) == (5, 20)
    assert row["relative_change"] == pytest.approx(3.0)
    assert run(artifacts, baseline, max_shift=3.5)["shift.train"].passed


def test_small_classes_are_not_judged_but_a_vanished_class_is(copy: Path) -> None:
    baseline = stats(copy)
    plates = baseline["val"]["objects"]["license_plate"]
    assert (plates["tiny"], plates["small"]) == (8, 0)
    plates["tiny"], plates["small"] = 2, 6
    assert run(copy, baseline)["shift.val"].passed  # under min_objects in both versions
    check = run(copy, baseline, min_objects=5)["shift.val"]
    assert not check.passed and "license_plate/tiny share" in check.message

    val = read(copy, "val.json")
    face = next(c["id"] for c in val["categories"] if c["name"] == "face")
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != face]
    write(copy, "val.json", val)
    check = run(copy, stats(copy))["shift.val"]
    assert not check.passed and check.message.startswith("shift.val: 1 class/bucket")
    assert "face disappeared" in check.message


def test_a_split_gone_since_the_baseline_warns(artifacts: Path) -> None:
    baseline = stats(artifacts)
    baseline["ref-night"] = baseline["ref-holdout"]
    checks = run(artifacts, baseline)
    assert failing(checks) == {"shift.ref-night"}
    assert checks["shift.ref-night"].severity == WARNING
