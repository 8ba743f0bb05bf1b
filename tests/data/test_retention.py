"""Retention in the stages: an image past its delete_after stops review, annotate push, prepare,
train and evaluate before any work (how many, the earliest date, the command to run, nothing
lost), prepare carries delete_after into its datasets and warns about expiring reference sets."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from data import retention
from data.atomic import read_jsonl, write_jsonl
from data.errors import AnonlabError
from data.manifest import read_manifest
from serving.cli import main
from tests.prepared import prepared_project

# Three drives of eight frames (drive-002 is panoramic: its frames are tiled); drive-001 is the
# reference set.
BASE = [
    "collect.synthetic.count=24",
    "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]",
]
COLLECTED = "2026-06-01T00:00:00+00:00"  # the clock while the pipeline fixture runs
EXPIRY = "2026-11-28T00:00:00+00:00"  # COLLECTED + collect.retention_days (180)
LATER = "2026-06-02T00:00:00+00:00"  # the tests' clock: nothing collected is overdue yet
OVERDUE = ("2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project taken through collect, review, annotate pull and prepare at COLLECTED."""
    root = tmp_path_factory.mktemp("retention")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANONLAB_NOW", COLLECTED)
        prepared_project(root, BASE)
    return root


@pytest.fixture
def project(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the pipeline's project folder (its params.yaml), the clock at LATER."""
    monkeypatch.setenv("ANONLAB_NOW", LATER)
    shutil.copytree(pipeline, tmp_path / "project")
    return tmp_path / "project" / "params.yaml"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def make_overdue_rows(manifest: Path) -> None:
    """Two records of a manifest past their delete_after (the OVERDUE dates)."""
    rows = read_jsonl(manifest)
    for row, date in zip(rows, OVERDUE, strict=False):
        row["delete_after"] = date
    write_jsonl(manifest, rows)


def make_overdue_entries(prepared: Path) -> None:
    """Overdue: one tiled image of train.json (all its tiles) and one image of the holdout
    reference set (the earlier date), one image of val.json (the later)."""
    train = json.loads((prepared / "train.json").read_text())
    tiles = Counter(i["sha256"] for i in train["images"] if "tile" in i)
    tiled, n = tiles.most_common(1)[0]
    assert n > 1
    for i in train["images"]:
        if i["sha256"] == tiled:
            i["delete_after"] = OVERDUE[0]
    val = json.loads((prepared / "val.json").read_text())
    val["images"][0]["delete_after"] = OVERDUE[1]
    ref = json.loads((prepared / "refs/holdout.json").read_text())
    ref["images"][0]["delete_after"] = OVERDUE[0]
    for name, ds in (("train.json", train), ("val.json", val), ("refs/holdout.json", ref)):
        (prepared / name).write_text(json.dumps(ds))


# command, the input made overdue, the files named (relative to artifacts/), the stage's outputs.
STAGES = {
    "review": (["review"], "raw/manifest.jsonl", ["raw/manifest.jsonl"], "reviewed"),
    "annotate push": (
        ["annotate", "push"],
        "reviewed/manifest.jsonl",
        ["reviewed/manifest.jsonl"],
        "annotations",
    ),
    "prepare": (["prepare"], "reviewed/manifest.jsonl", ["reviewed/manifest.jsonl"], "prepared"),
    "train": (["train"], "prepared", ["prepared/train.json", "prepared/val.json"], "models"),
    "evaluate": (
        ["evaluate"],
        "prepared",
        ["prepared/val.json", "prepared/refs/holdout.json"],
        "eval",
    ),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_refuses_overdue_images_before_any_work(
    project: Path, stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command, made_overdue, named, output = STAGES[stage]
    artifacts = project.parent / "artifacts"
    if made_overdue == "prepared":
        make_overdue_entries(artifacts / made_overdue)
    else:
        make_overdue_rows(artifacts / made_overdue)
    if not (artifacts / output).exists():  # the outputs of an earlier run, to be kept
        (artifacts / output).mkdir()
        (artifacts / output / "metrics.json").write_text('{"earlier": 1}')
    before = files(artifacts)

    code = main(["--params", str(project), *command])

    err = capsys.readouterr().err
    assert code == 2
    # Two images (the tiles of one count once), the earliest date, the command to run.
    where = ", ".join(str(artifacts / n) for n in named)
    assert f"error: 2 images in {where} are past delete_after" in err, err
    assert f"the earliest {OVERDUE[0]}" in err
    assert "Run `anonlab retention`" in err and f"then `anonlab {stage}` again" in err
    # Nothing written, nothing lost.
    assert files(artifacts) == before


def test_entries_without_delete_after_and_absent_files_are_not_judged(project: Path) -> None:
    prepared = project.parent / "artifacts" / "prepared"
    holdout = prepared / "refs" / "holdout.json"
    ref = json.loads(holdout.read_text())
    for image in ref["images"]:  # as an external reference set's images: not in the store
        del image["delete_after"]
    holdout.write_text(json.dumps(ref))
    far = datetime(2100, 1, 1, tzinfo=UTC)
    retention.refuse_overdue_datasets(
        [holdout, prepared / "refs" / "absent.json"], command="anonlab evaluate", at=far
    )
    train = json.loads((prepared / "train.json").read_text())
    images = len({i["sha256"] for i in train["images"]})
    with pytest.raises(AnonlabError, match=f"^{images} images in {prepared / 'train.json'} are"):
        retention.refuse_overdue_datasets([prepared / "train.json", holdout], command="x", at=far)


def test_prepare_writes_delete_after_into_every_image_entry(pipeline: Path) -> None:
    artifacts = pipeline / "artifacts"
    expiry = {
        r.sha256: r.delete_after for r in read_manifest(artifacts / "reviewed/manifest.jsonl")
    }
    assert set(expiry.values()) == {EXPIRY}
    prepared = artifacts / "prepared"
    tiles = 0
    for name in ("train.json", "val.json", "refs/holdout.json"):
        for image in json.loads((prepared / name).read_text())["images"]:
            assert image["delete_after"] == expiry[image["sha256"]], (name, image)
            tiles += "tile" in image
    assert tiles > 0  # tiles carry their source image's


def test_prepare_warns_when_a_reference_set_will_lose_images(
    project: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = project.parent / "artifacts"
    holdout = json.loads((artifacts / "prepared/refs/holdout.json").read_text())["images"]

    with caplog.at_level(logging.WARNING, logger="data.prepare"):
        assert main(["--params", str(project), "prepare"]) == 0
    stats = json.loads((artifacts / "prepared/stats.json").read_text())
    assert stats["ref-holdout"]["expiring"] == {"within_days": 30, "images": 0, "earliest": None}
    assert "reference set" not in caplog.text

    horizon = "prepare.reference_expiry_warning_days=200"  # LATER + 200 days is past EXPIRY
    with caplog.at_level(logging.WARNING, logger="data.prepare"):
        assert main(["--params", str(project), "prepare", horizon]) == 0
    stats = json.loads((artifacts / "prepared/stats.json").read_text())
    assert stats["ref-holdout"]["expiring"] == {
        "within_days": 200,
        "images": len(holdout),
        "earliest": EXPIRY,
    }
    assert (
        f"reference set 'holdout': {len(holdout)} of its images expire within 200 days "
        f"(the earliest on {EXPIRY[:10]})" in caplog.text
    )


def test_delete_after_counts_from_a_capture_time_read_at_its_earliest_instant() -> None:
    collected = datetime(2026, 6, 1, tzinfo=UTC)
    keep = timedelta(days=180)
    # A camera's local time (no zone) is read at UTC+14: its earliest instant.
    assert (
        retention.delete_after(collected, "2026-05-04T10:30:15", keep)
        == datetime(2026, 5, 3, 20, 30, 15, tzinfo=UTC) + keep
    )
    # A time with a zone is taken as it is.
    assert (
        retention.delete_after(collected, "2026-05-04T10:30:15+02:00", keep)
        == datetime(2026, 5, 4, 8, 30, 15, tzinfo=UTC) + keep
    )
    # Unknown, not a time, or after the collection (a wrong camera clock): from the collection.
    for captured in (None, "", "2026:05:04", "2026-06-02T00:00:00"):
        assert retention.delete_after(collected, captured, keep) == collected + keep


def test_the_clock_is_anonlab_now_when_set() -> None:
    assert retention.now({"ANONLAB_NOW": "2030-01-02"}) == datetime(2030, 1, 2, tzinfo=UTC)
    shifted = retention.now({"ANONLAB_NOW": "2030-01-02T02:00:00+02:00"})
    assert shifted.isoformat() == "2030-01-02T00:00:00+00:00"
    real = retention.now({})
    assert abs(real - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(AnonlabError, match="ANONLAB_NOW: 'next week' is not an ISO 8601 time"):
        retention.now({"ANONLAB_NOW": "next week"})
