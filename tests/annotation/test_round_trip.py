"""The round trip through a real Label Studio: push images, annotate them through the API as an
annotator would, pull: the COCO geometry is what was drawn, within one pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from pycocotools import mask as mask_utils

from annotation.client import connect
from annotation.config import TOKEN_ENV, AnnotationConfig
from annotation.pull import run_pull
from annotation.push import run_push
from data.config import SyntheticConfig, TaxonomyConfig
from data.manifest import ManifestRecord, write_manifest
from data.synthetic import generate, labelstudio_task
from data.synthetic.images import CLASSES, KEYPOINTS, SyntheticImage
from tests.annotation.conftest import LabelStudioUnderTest
from tests.conftest import REPO
from tests.images import store_jpeg

TAXONOMY = TaxonomyConfig(classes=list(CLASSES), keypoints=list(KEYPOINTS))


def store(artifacts: Path, img: SyntheticImage) -> ManifestRecord:
    return store_jpeg(
        artifacts,
        img.encode(),
        width=img.width,
        height=img.height,
        source_path=img.name,
        session=img.session,
    )


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_push_annotate_pull_reproduces_the_geometry(
    label_studio: LabelStudioUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    artifacts = label_studio.artifacts
    defaults = yaml.safe_load((REPO / "conf/collect/default.yaml").read_text())["synthetic"]
    # Frames of odd sizes, and a panorama whose objects cross the seam.
    synthetic = SyntheticConfig(
        **{**defaults, "count": 3, "seed": 2, "width": 333, "height": 251, "panorama_share": 0.5}
    )
    images = [img for img in generate(synthetic) if img.objects]
    records = [store(artifacts, img) for img in images]
    write_manifest(artifacts / "reviewed" / "manifest.jsonl", records)

    raw = yaml.safe_load((REPO / "conf/annotation/default.yaml").read_text())
    raw.update(source="server", url=label_studio.url, project_title="round-trip")
    cfg = AnnotationConfig.model_validate(raw)
    pushed = run_push(cfg, TAXONOMY, artifacts)
    client = connect(cfg)
    by_url = {t["data"]["image"]: t["id"] for t in client.tasks(pushed.project_id)}

    # The annotator draws the synthetic ground truth, region by region, relations included.
    truth: dict[str, SyntheticImage] = {}
    for img, rec in zip(images, records, strict=True):
        url = next(u for u in by_url if rec.sha256 in u)
        result = labelstudio_task(img, url, 0)["annotations"][0]["result"]
        response = requests.post(
            f"{label_studio.url}/api/tasks/{by_url[url]}/annotations",
            json={"result": result, "lead_time": 30.0},
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        truth[rec.sha256] = img

    report = run_pull(cfg, TAXONOMY, artifacts, artifacts.parent)
    assert report.images == len(images) and report.new_snapshot
    coco = json.loads((artifacts / "annotations" / "coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    checked = 0
    for image in coco["images"]:
        img = truth[image["sha256"]]
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(img.objects)
        for obj in img.objects:
            if obj.mask.sum() < 400:  # tiny pieces below the export's 4 px cut may differ
                continue
            # The converted instance of this object: the same class, the largest overlap.
            best = max(
                (a for a in anns if names[a["category_id"]] == obj.label),
                key=lambda a: (mask_utils.decode(a["segmentation"]).astype(bool) & obj.mask).sum(),
            )
            got = mask_utils.decode(best["segmentation"]).astype(bool)
            target = obj.mask if obj.label in ("person", "vehicle") else obj.amodal_mask
            if img.panorama and target[:, 0].any() and target[:, -1].any():
                assert got[:, 0].any() and got[:, -1].any()  # one object across the seam
            else:
                assert np.abs(np.subtract(box(got), box(target))).max() <= 1, obj.label
            assert (got & target).sum() / (got | target).sum() > 0.9, obj.label
            for k, name in enumerate(KEYPOINTS):
                x, y, v = obj.keypoints.get(name, (0, 0, 0))
                if v > 0 and 0 <= x < img.width and 0 <= y < img.height:
                    kx, ky, kv = best["keypoints"][3 * k : 3 * k + 3]
                    assert kv == 2 and abs(kx - x) <= 1 and abs(ky - y) <= 1, name
            checked += 1
    assert checked >= 5
