"""evaluate's outputs as an erasure store: an image's detections leave every predictions file of
its set (found through the prepared set's ids), its gallery figures leave the report."""

from __future__ import annotations

import json
from pathlib import Path

from data.erasure.subjects import Subject
from data.report_figures import figure
from evaluation.erasure import EvalStore

A, B = "a" * 64, "b" * 64


def test_an_images_detections_and_gallery_crops_leave_evaluates_outputs(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    (prepared / "refs").mkdir(parents=True)
    val = {"images": [{"id": 1, "sha256": A}, {"id": 2, "sha256": B}], "annotations": []}
    (prepared / "val.json").write_text(json.dumps(val))
    (prepared / "refs" / "holdout.json").write_text(
        json.dumps({"images": [{"id": 1, "sha256": B}], "annotations": []})
    )
    predictions = tmp_path / "eval" / "predictions" / "model"
    predictions.mkdir(parents=True)
    dets = [{"image_id": i, "score": 0.9, "bbox": [0, 0, 1, 1]} for i in (1, 2, 1, 12)]
    (predictions / "val.json").write_text(json.dumps(dets, indent=2, sort_keys=True))
    holdout = [{"image_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}]
    (predictions / "holdout.json").write_text(json.dumps(holdout, indent=2, sort_keys=True))
    report = tmp_path / "eval" / "report.html"
    report.write_text("\n".join(["<h1>eval</h1>", figure("<img>", [A]), figure("<img>", [B])]))

    store = EvalStore(tmp_path)
    found = {h.where: h.count for h in store.find([Subject(A)])}
    assert found == {"eval/predictions/model/val.json": 2, "eval/report.html": 1}
    store.erase([Subject(A)])
    assert [d["image_id"] for d in json.loads((predictions / "val.json").read_text())] == [2, 12]
    # Image id 1 of the holdout set is another image: its detection stays.
    assert json.loads((predictions / "holdout.json").read_text()) == holdout
    assert A not in report.read_text() and B in report.read_text()
    assert store.find([Subject(A)]) == [] and store.erase([Subject(A)]) == []
