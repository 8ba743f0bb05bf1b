"""The artifacts folder's stores on hand-made files: what each finds of an image, what erasing
removes, and what it leaves (other images, aggregates)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from data.erasure.artifact_stores import BlurredStore, ReviewedStore, TempStore, artifact_stores
from data.erasure.subjects import Subject
from data.report_figures import figure

A, B = "a" * 64, "b" * 64
SUBJECT = Subject(A, f"images/aa/{A}.jpg", ("drive-1",), ("/data/drive-1/a.jpg",))


def test_blurred_copies_and_what_names_the_image_go_the_others_stay(tmp_path: Path) -> None:
    """Copies named by the image, or described by a sidecar or a blur ledger row that names it,
    go with their sidecars and masks; the ledger keeps the other images' rows."""
    blurred = tmp_path / "blurred" / "holdout"
    blurred.mkdir(parents=True)
    for name in (f"{A}.jpg", "frame-7.jpg", "frame-9.jpg", "frame-9.jpg.mask.png", f"{B}.jpg"):
        (blurred / name).write_bytes(b"jpeg")
    (blurred / "frame-7.jpg.json").write_text(json.dumps({"input": "/data/drive-1/a.jpg"}))
    (blurred / f"{B}.jpg.json").write_text(json.dumps({"input": "/data/drive-2/b.jpg"}))
    ledger = blurred / ".anonlab-ledger" / "20261207T010203000000Z-7.jsonl"
    ledger.parent.mkdir()
    rows = [
        {"input": "/data/drive-3/x.jpg", "input_sha256": A, "status": "ok",
         "output": str(blurred / "frame-9.jpg")},
        {"input": "/data/drive-2/b.jpg", "input_sha256": B, "status": "ok",
         "output": str(blurred / f"{B}.jpg")},
    ]  # fmt: skip
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = BlurredStore(tmp_path)
    assert sorted(h.where for h in store.find([SUBJECT])) == [
        f"blurred/holdout/.anonlab-ledger/{ledger.name}",
        f"blurred/holdout/{A}.jpg",
        "blurred/holdout/frame-7.jpg",
        "blurred/holdout/frame-7.jpg.json",
        "blurred/holdout/frame-9.jpg",
        "blurred/holdout/frame-9.jpg.mask.png",
    ]
    assert len(store.erase([SUBJECT])) == 6 and store.find([SUBJECT]) == []
    assert sorted(p.name for p in blurred.iterdir()) == [
        ".anonlab-ledger", f"{B}.jpg", f"{B}.jpg.json"
    ]  # fmt: skip
    assert [json.loads(x) for x in ledger.read_text().splitlines()] == rows[1:]


def test_leftovers_of_interrupted_writes_that_hold_the_image_are_swept(tmp_path: Path) -> None:
    shard = tmp_path / "raw" / "images" / "aa"
    shard.mkdir(parents=True)
    (shard / f".{A}.jpg.x1y2.tmp").write_bytes(b"partial")
    staging = tmp_path / "prepared" / ".tiles.3f2a.staging"
    staging.mkdir(parents=True)
    (staging / f"{A}-0-0.jpg").write_bytes(b"tile")
    (staging / f"{B}-0-0.jpg").write_bytes(b"tile")
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    (reviewed / ".manifest.jsonl.9q.tmp").write_text(json.dumps({"sha256": A}))
    (reviewed / ".rejected.jsonl.7z.tmp").write_text(json.dumps({"sha256": B}))
    (reviewed / "manifest.jsonl").write_text("")
    store = TempStore(tmp_path)
    assert len(store.find([SUBJECT])) == 3
    store.erase([SUBJECT])
    assert store.find([SUBJECT]) == []
    assert not (shard / f".{A}.jpg.x1y2.tmp").exists()
    assert [p.name for p in staging.iterdir()] == [f"{B}-0-0.jpg"]
    assert (reviewed / ".rejected.jsonl.7z.tmp").exists()


def test_a_report_loses_the_figures_of_the_image_and_keeps_its_mode(tmp_path: Path) -> None:
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    report = reviewed / "report.html"
    page = "\n".join(
        ["<h1>review</h1>", figure("<img src='1'>", [A]), figure("<img src='2'>", [B]), ""]
    )
    report.write_text(page)
    os.chmod(report, 0o444)
    (reviewed / "manifest.jsonl").write_text(
        "".join(json.dumps({"sha256": s, "source_path": f"/d/{s[0]}"}) + "\n" for s in (A, B))
    )
    store = ReviewedStore(tmp_path)
    assert {h.what: h.count for h in store.find([SUBJECT])} == {"figures": 1, "manifest rows": 1}
    store.erase([SUBJECT])
    text = report.read_text()
    assert A not in text and B in text and "<h1>review</h1>" in text
    assert stat.S_IMODE(report.stat().st_mode) == 0o444
    assert [
        json.loads(x)["sha256"] for x in (reviewed / "manifest.jsonl").read_text().splitlines()
    ] == [B]


def test_a_report_with_unmarked_figures_is_deleted_whole(tmp_path: Path) -> None:
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    (reviewed / "report.html").write_text(
        f"<figure><img title='/data/drive-1/a.jpg (store: images/aa/{A}.jpg)'></figure>"
    )
    (held,) = ReviewedStore(tmp_path).erase([SUBJECT])
    assert "deleted whole" in held.what and not (reviewed / "report.html").exists()


def test_aggregates_are_left_as_computed(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    metrics = tmp_path / "raw" / "metrics.json"
    metrics.write_text(json.dumps({"images": 2}))
    for store in artifact_stores(tmp_path):
        store.erase([SUBJECT])
    assert json.loads(metrics.read_text()) == {"images": 2}
