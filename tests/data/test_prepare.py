"""prepare on the synthetic pipeline: leak-free session splits, reference sets, tiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from annotation.pull import run_pull
from data.collect import run_collect
from data.errors import AnonlabError
from data.manifest import read_manifest
from data.prepare import run_prepare
from data.review import run_review
from serving.params import Project, load_project
from tests.images import texture

# Three drives of eight frames: drive-001 is the reference set, the others (drive-002 is
# panoramic) are split.
BASE = [
    "collect.synthetic.count=24",
    "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]",
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from data.config import compose
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("prepare")
    (root / "params.yaml").write_text(compose(REPO / "conf"))
    project = load_project(root / "params.yaml", BASE)
    p = project.params
    run_collect(p.collect, project.artifacts / "raw", taxonomy=p.taxonomy, root=project.root)
    run_review(p.review, project.artifacts / "raw", project.artifacts / "reviewed")
    run_pull(p.annotation, p.taxonomy, project.artifacts, project.root)
    return project


def prepare(project: Project, *overrides: str):
    project = load_project(project.root / "params.yaml", [*BASE, *overrides])
    p = project.params
    return run_prepare(p.prepare, p.taxonomy, project.artifacts, project.root)


def load(project: Project, name: str) -> dict:
    file = f"refs/{name[4:]}.json" if name.startswith("ref-") else f"{name}.json"
    return json.loads((project.artifacts / "prepared" / file).read_text())


def test_splits_are_by_session_and_reference_sets_stay_out(pipeline: Project) -> None:
    report = prepare(pipeline)
    session = {
        r.sha256: r.session for r in read_manifest(pipeline.artifacts / "reviewed/manifest.jsonl")
    }
    train, val, ref = (load(pipeline, n) for n in ("train", "val", "ref-holdout"))
    sessions = {
        n: {session[i["sha256"]] for i in ds["images"]}
        for n, ds in (("train", train), ("val", val), ("ref", ref))
    }
    assert sessions["ref"] == {"synthetic-drive-001"}
    assert not sessions["train"] & sessions["val"]
    assert not (sessions["train"] | sessions["val"]) & sessions["ref"]
    assert train["images"] and val["images"]
    assert report.images == {
        "train": len(train["images"]),
        "val": len(val["images"]),
        "ref-holdout": len(ref["images"]),
    }
    # Categories and keypoint names come from the taxonomy.
    person = next(c for c in train["categories"] if c["name"] == "person")
    assert person["keypoints"] == pipeline.params.taxonomy.keypoints


def test_large_images_become_tiles_whose_files_and_masks_agree(pipeline: Project) -> None:
    prepare(pipeline)
    prepared = pipeline.artifacts / "prepared"
    size = pipeline.params.prepare.tiling.size
    for name in ("train", "val", "ref-holdout"):
        ds = load(pipeline, name)
        coco = COCO()
        coco.dataset = ds
        coco.createIndex()
        for img in ds["images"]:
            path = prepared / img["file_name"]
            assert path.is_file(), path
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"])
            if name != "ref-holdout":
                assert img["width"] <= size and img["height"] <= size
        for a in ds["annotations"]:
            mask = coco.annToMask(a)
            img = coco.imgs[a["image_id"]]
            assert mask.shape == (img["height"], img["width"]) and mask.sum() == a["area"] > 0
    tiles = [i for n in ("train", "val") for i in load(pipeline, n)["images"] if "tile" in i]
    assert tiles, "640x480 frames and 1024x512 panoramas are larger than the tile size"
    assert any(t["tile"][0] + t["tile"][2] > 1024 for t in tiles if t["width"] == size)


def test_stats_count_every_object_by_class_and_size(pipeline: Project) -> None:
    prepare(pipeline)
    stats = json.loads((pipeline.artifacts / "prepared/stats.json").read_text())
    rows = json.loads((pipeline.artifacts / "prepared/sizes.json").read_text())
    for name in ("train", "val", "ref-holdout"):
        total = sum(sum(b.values()) for b in stats[name]["objects"].values())
        assert total == len(load(pipeline, name)["annotations"])
        assert sum(r["objects"] for r in rows if r["split"] == name) == total


def test_a_reference_set_that_does_not_exist_is_a_clear_error(pipeline: Project) -> None:
    prepare(pipeline)
    before = (pipeline.artifacts / "prepared/train.json").read_bytes()
    with pytest.raises(AnonlabError, match=r"reference_sets\[0\].*'nowhere'.*synthetic-drive-404"):
        prepare(pipeline, "prepare.reference_sets=[{name:nowhere,sessions:[synthetic-drive-404]}]")
    assert (pipeline.artifacts / "prepared/train.json").read_bytes() == before


def test_a_leak_into_a_reference_set_is_caught_and_named(pipeline: Project, tmp_path: Path) -> None:
    # An external reference set, first of an unrelated image: no leak.
    Image.fromarray(texture(320, 240, 5)).save(tmp_path / "other.jpg")
    images = [{"id": 1, "file_name": "other.jpg", "width": 320, "height": 240}]
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    refsets = f"prepare.reference_sets=[{{name:external,coco:'{ref}'}}]"
    prepare(pipeline, refsets)
    before = (pipeline.artifacts / "prepared/train.json").read_bytes()

    # Then it also holds a copy of a training image.
    leaked = load(pipeline, "train")["images"][0]
    source = pipeline.artifacts / leaked.get(
        "source_file_name", leaked["file_name"].removeprefix("../")
    )
    shutil.copy(source, tmp_path / "copy.jpg")
    w, h = Image.open(source).size
    images.append({"id": 2, "file_name": "copy.jpg", "width": w, "height": h})
    ref.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    with pytest.raises(AnonlabError, match=r"(?s)1 train image\(s\) leak.*external") as error:
        prepare(pipeline, refsets)
    assert "copy.jpg" in str(error.value) and "synthetic://" in str(error.value)
    assert "other.jpg" not in str(error.value) and "nothing written" in str(error.value)
    assert (pipeline.artifacts / "prepared/train.json").read_bytes() == before


def test_reference_sets_by_tag(pipeline: Project) -> None:
    missing = r"'night'.*no annotated images tagged \['night-shift'\]"
    with pytest.raises(AnonlabError, match=missing):
        prepare(pipeline, "prepare.reference_sets=[{name:night,tags:[night-shift]}]")
    # A source name is a tag: here it selects every image, leaving nothing to train on.
    report = prepare(pipeline, "prepare.reference_sets=[{name:all,tags:[synthetic]}]")
    assert report.images["train"] == report.images["val"] == 0
    assert report.images["ref-all"] == len(load(pipeline, "ref-all")["images"]) > 0
