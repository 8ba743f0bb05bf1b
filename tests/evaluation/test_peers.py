"""Peer baselines: CenterFace scored by evaluate's scorer on a real photograph, for the classes it
finds; and the `peer:` entries of metrics.json, which validate and export never take for a
model. (evaluate writing them into metrics.json, the report and MLflow: test_evaluate.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import pytest
import skimage.data

from data.atomic import read_json
from data.errors import AnonlabError
from evaluation.evaluate import score_options
from evaluation.peers import PeerSet, evaluate_peer, load_peer, peer_key
from evaluation.validate import gate
from serving.export import run_export
from serving.params import load_project
from serving.runtime.tiles import TilingSpec
from tests.conftest import REPO
from tests.evaluation.test_evaluate import GATE, _cell, _entry, _failed, _metrics
from tests.serving.artifacts import (
    DEMO_GATE,
    NAME,
    export_setup,
    tiny_model_dir,
    write_validated,
    write_validation,
)

PARAMS = load_project(REPO / "params.yaml", ["evaluate.n_boot=0"]).params
# Eileen Collins's face in scikit-image's astronaut.png (public domain), drawn by hand:
# forehead to chin, ear to ear.
FACE = [178.0, 62.0, 84.0, 100.0]
BODY = [20.0, 150.0, 340.0, 362.0]


def _astronaut(folder: Path) -> PeerSet:
    """A set of one image, astronaut.png, with her face and her body (a person) annotated."""
    cv2.imwrite(str(folder / "astronaut.png"), skimage.data.astronaut()[:, :, ::-1])
    image = {"id": 1, "file_name": "astronaut.png", "width": 512, "height": 512}
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": box, "area": box[2] * box[3]}
        for i, box in enumerate([FACE, BODY])
    ]
    for a in annotations:
        a["iscrowd"] = 0
    categories = [{"id": 1, "name": "face"}, {"id": 2, "name": "person"}]
    gt = {"images": [image], "annotations": annotations, "categories": categories}
    return PeerSet(gt=gt, images_root=folder)


def test_centerface_is_scored_on_the_faces_it_finds_and_nothing_else(tmp_path: Path) -> None:
    cfg = PARAMS.evaluate
    one = _astronaut(tmp_path)
    spec = TilingSpec(tile=512, overlap=96)
    detector = load_peer("centerface", spec, cfg.min_threshold)
    options = score_options(
        cfg,
        PARAMS.taxonomy.classes,
        cfg.min_threshold,
        seed=0,
        identifiable=PARAMS.taxonomy.identifiable,
    )
    result = evaluate_peer(detector, {"val": one, "holdout": one}, options, PARAMS.taxonomy.classes)
    assert result.classes == ("face",)  # the person in the photo is not held against it
    for s in result.scores.values():
        assert set(s.recall) == {"face"}
        cell = s.recall["face"]["all"]
        assert (cell.n, cell.iou, cell.coverage) == (1, 1.0, 1.0)
    # Chosen on val as a model's threshold is: the highest score still reaching the target.
    face = result.thresholds["face"]
    assert face["reached"] and face["val_recall"] == 1.0
    assert cfg.min_threshold < face["threshold"] <= 1
    entry = result.entry()
    assert entry["peer"] == "centerface" and entry["classes"] == ["face"]
    assert entry["sets"]["holdout"]["recall"]["face"]["all"]["iou"] == 1.0


def test_a_peer_that_finds_no_class_of_the_taxonomy_is_refused(tmp_path: Path) -> None:
    detector = load_peer("centerface", TilingSpec(tile=512, overlap=96), 0.05)
    options = score_options(
        PARAMS.evaluate, ["vehicle"], 0.05, seed=0, identifiable=PARAMS.taxonomy.identifiable
    )
    with pytest.raises(AnonlabError, match=r"centerface finds \['face'\], none of them in"):
        evaluate_peer(detector, {"val": _astronaut(tmp_path)}, options, ["vehicle"])


def test_the_gate_never_judges_a_peer() -> None:
    # A peer far below every target beside a model and an anonymizer that reach them.
    ours = _entry(_cell(40, 0.97), _cell(20, 0.95))
    metrics = _metrics(ours, ours)
    metrics[peer_key("centerface")] = _entry(_cell(40, 0.0), _cell(20, 0.0))
    checks = gate(metrics, models=["m"], evaluate=PARAMS.evaluate, validate=GATE)
    assert not _failed(checks)
    assert not any("peer" in c.name or "centerface" in c.message for c in checks)


def test_export_ships_no_peer(tmp_path: Path) -> None:
    setup = replace(export_setup(tmp_path), models=[NAME])
    tiny_model_dir(setup.artifacts)
    write_validation(setup, version="3", gate=DEMO_GATE)
    metrics = read_json(setup.artifacts / "eval" / "metrics.json")
    peer = {"peer": "centerface", "licence": "MIT", "classes": ["face"], "thresholds": {}}
    metrics[peer_key("centerface")] = {**peer, "sets": metrics[NAME]["sets"]}
    write_validated(setup, metrics, {NAME: "3"}, DEMO_GATE)
    folder, composite = run_export(setup)
    shipped = sorted(p.name for p in (setup.artifacts / "serving").iterdir())
    assert shipped == sorted([folder.name, composite.name])
    assert not any("centerface" in p.name for p in (setup.artifacts / "serving").rglob("*"))
