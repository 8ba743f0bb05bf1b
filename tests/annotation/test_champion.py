"""`annotate push` with a champion in a real MLflow registry (SQLite) and the session's real Label
Studio: the predictions the server holds are the champion's detections on the upright image, and
convert reads them back as the same objects; push's summary names the champion, and without one
says why Haar (no registry, only a challenger, neither), as one log line does."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml

from annotation.client import connect
from annotation.convert import ImageRef, to_coco
from annotation.convert.brush_rle import decode_brush_rle
from annotation.mining import queue_score
from annotation.preannotation import Champions, score_uncertainty
from annotation.push import image_url
from data.manifest import ManifestRecord
from evaluation.champion import load_champions
from evaluation.config import EvaluateConfig
from serving.cli import main as cli_main
from serving.runtime.imagefile import read_upright
from serving.runtime.tiles import detect_tiled
from tests.annotation.conftest import LabelStudioUnderTest
from tests.annotation.server_project import TAXONOMY, annotation_cfg, review
from tests.conftest import REPO
from tests.images import jpeg_bytes, store_jpeg, texture
from tests.training.tiny_models import register_model, save_tiny_model

NAME = "maskrcnn_mobilenet_v3_fpn"  # registered under a model of the project's conf/
TILING = {"tile": 128, "overlap": 32}
MIN_SCORE = 0.05  # a random model's scores are about 1 / (classes + 1)


def evaluate_cfg() -> EvaluateConfig:
    raw = yaml.safe_load((REPO / "conf/evaluate/default.yaml").read_text(encoding="utf-8"))
    # Windows smaller than the images: the champion's detections are merged across tiles.
    raw.update(device="cpu", tiling={**raw["tiling"], **TILING})
    return EvaluateConfig.model_validate(raw)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root whose MLflow registry (SQLite) holds one version of a random tiny Mask
    R-CNN (fixed seed), registered as training registers it; no alias yet."""
    root = tmp_path_factory.mktemp("registry")
    _, weights, config = save_tiny_model(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DVC_ROOT", raising=False)
        assert register_model(root, NAME, weights, config) == "1"
    return root


def _alias(root: Path, alias: str) -> None:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        NAME, alias, "1"
    )


def _load(root: Path) -> Champions:
    return load_champions([NAME], root=root, evaluate=evaluate_cfg(), min_score=MIN_SCORE)


def test_without_a_champion_push_says_why_it_uses_haar(
    registry: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    caplog.set_level(logging.INFO, logger="evaluation.champion")
    none = _load(tmp_path)
    assert none.models == []
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create a registry
    assert none.why == (
        f"Haar cascades, because the MLflow registry at sqlite:///{tmp_path}/mlflow.db does not "
        "exist (no model was trained with tracking here)"
    )
    assert f"Haar cascades: the MLflow registry at sqlite:///{tmp_path}/mlflow.db does not" in (
        caplog.text
    )
    # Registered, but neither alias yet: validate would make it the challenger.
    unvalidated = _load(registry)
    assert unvalidated.models == []
    assert f"({NAME}: neither a champion nor a challenger); `anonlab validate` makes" in (
        unvalidated.why
    )
    caplog.clear()
    _alias(registry, "challenger")
    challenger = _load(registry)
    assert challenger.models == []
    assert challenger.why == (
        f"Haar cascades, because the MLflow registry at sqlite:///{registry}/mlflow.db has no "
        f"champion ({NAME}: only a challenger (version 1)); promote with `anonlab validate promote`"
    )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert f"sqlite:///{registry}/mlflow.db" in lines[0]
    assert f"{NAME}: only a challenger (version 1)" in lines[0]


def _predictions(ls: LabelStudioUnderTest, task_id: int) -> list[dict]:
    response = requests.get(
        f"{ls.url}/api/predictions",
        params={"task": task_id},
        headers={"Authorization": f"Token {ls.token}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def test_annotate_push_predicts_with_the_champion_on_the_upright_image(
    registry: Path,
    ls: LabelStudioUnderTest,
    params_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    _alias(registry, "champion")
    # Stored 120 x 160 and turned upright by the EXIF orientation 6 (90° clockwise): the
    # annotator sees 160 x 120, and so must the champion.
    stored = [texture(120, 160, seed) for seed in (21, 22, 23)]
    records = [
        store_jpeg(
            ls.artifacts,
            jpeg_bytes(pixels, orientation=6),
            width=pixels.shape[0],
            height=pixels.shape[1],
            source_path=f"/phone/{k}.jpg",
            session="phone",
        )
        for k, pixels in enumerate(stored)
    ]
    review(ls.artifacts, records)
    caplog.set_level(logging.INFO, logger="evaluation.champion")
    argv = [
        "--params",
        str(params_file),
        "annotate",
        "push",
        f"paths.artifacts={ls.artifacts}",
        "annotation.source=server",
        f"annotation.url={ls.url}",
        "annotation.project_title=push-champion",
        f"annotation.champion_min_score={MIN_SCORE}",
        f"train.models=[{NAME}]",
        "evaluate.device=cpu",
        *(f"evaluate.tiling.{k}={v}" for k, v in TILING.items()),
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "push: 3 new tasks" in out
    assert (
        f"pre-annotations: {NAME}:1: the champion {NAME} version 1 of the MLflow registry at "
        f"sqlite:///{registry}/mlflow.db"
    ) in out
    assert f"pre-annotations from the champion {NAME} version 1 of the MLflow registry" in (
        caplog.text
    )
    [champion] = _load(registry).models  # the same version: what the champion finds, to compare
    cfg = annotation_cfg(ls.url, "push-champion")
    client = connect(cfg)
    project_id = client.find_project("push-champion")
    assert client.get_project(project_id)["model_version"] == f"{NAME}:1"
    tasks = {t["data"]["image"]: t["id"] for t in client.tasks(project_id)}
    metas = {t["id"]: t["meta"] for t in client.export_tasks(project_id)}
    types: set[str] = set()
    scores = {}
    for record in records:
        task_id = tasks[image_url(record)]
        [prediction] = _predictions(ls, task_id)
        assert prediction["model_version"] == f"{NAME}:1"
        upright = read_upright(ls.artifacts / "raw" / record.path)
        assert upright.shape[:2] == (record.height, record.width) == (120, 160)
        dets = detect_tiled(upright, champion.detector, champion.spec)
        dets = dets.select(dets.scores >= MIN_SCORE)
        assert len(dets) > 0
        # No face in these textures for the second opinion either: queued by uncertainty.
        uncertainty = score_uncertainty(dets.scores.tolist())
        assert metas[task_id] == {
            "queued": "uncertain",
            "uncertainty": pytest.approx(uncertainty, abs=1e-4),
            "second_opinion": "centerface",
            "missed_faces": 0,
        }
        assert prediction["score"] == pytest.approx(queue_score(uncertainty, 0), abs=1e-4)
        scores[task_id] = prediction["score"]
        result = prediction["result"]
        for region in result:
            types.add(region["type"])
            assert (region["original_width"], region["original_height"]) == (160, 120)
        _assert_same_objects(result, record, dets, champion.classes)
    # The shapes of a mask model under this taxonomy: faces, plates, masks.
    assert types == {"ellipselabels", "rectanglelabels", "brushlabels"}
    # Imported uncertain first: task ids follow increasing prediction score.
    assert [scores[t] for t in sorted(scores)] == sorted(scores.values())


def _assert_same_objects(
    result: list[dict], record: ManifestRecord, dets, classes: list[str]
) -> None:
    """The regions, read back as pull reads an accepted prediction, are the detections: one
    object each, of its class, over its pixels (brushes exactly; ellipses and rectangles within
    one pixel of the mask's extent)."""
    task = {"id": 1, "data": {}, "annotations": [{"id": 1, "result": result}]}
    ref = ImageRef(record.path, record.width, record.height, record.sha256)
    conversion = to_coco(
        [task], classes=TAXONOMY.classes, keypoints=TAXONOMY.keypoints, resolve_image=lambda t: ref
    )
    assert not conversion.issues
    names = {c["id"]: c["name"] for c in conversion.coco["categories"]}
    objects = sorted(
        (names[a["category_id"]], [round(v) for v in a["bbox"]])
        for a in conversion.coco["annotations"]
    )
    expected = []
    for i in range(len(dets)):
        full = dets.full_mask(i, record.width, record.height)
        if not full.any():
            continue
        ys, xs = np.nonzero(full)
        box = [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ]
        expected.append((classes[int(dets.labels[i]) - 1], box))
    expected.sort()
    assert [label for label, _ in objects] == [label for label, _ in expected]
    for (_, got), (_, want) in zip(objects, expected, strict=True):
        assert np.abs(np.subtract(got, want)).max() <= 1, (got, want)
    brushes = [r for r in result if r["type"] == "brushlabels"]
    masks = [dets.full_mask(i, record.width, record.height) for i in range(len(dets))]
    for region in brushes:
        mask = decode_brush_rle(region["value"]["rle"], record.width, record.height)
        assert any(np.array_equal(mask, m) for m in masks)
