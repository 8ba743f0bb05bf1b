"""collect: every source kind, every quarantine reason, incremental re-runs, nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from data.atomic import read_jsonl
from data.errors import AnonlabError
from data.manifest import read_manifest
from serving.cli import main
from serving.params import Project
from tests.data.collecting import check_counts_add_up, collect, folder, raw
from tests.images import encode, jpeg_bytes, pil_bytes, texture, write

# The clock of the tests that use `drive` (its a.jpg was captured in May 2026).
NOW = "2026-06-01T00:00:00+00:00"
SHOT = datetime(2026, 5, 4, 10, 30, 15)
# SHOT, a camera's local time, read as its earliest instant (UTC+14).
SHOT_EARLIEST = datetime(2026, 5, 3, 20, 30, 15, tzinfo=UTC)


@pytest.fixture
def drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A capture folder with one image of every accepted format and depth; the clock at NOW."""
    monkeypatch.setenv("ANONLAB_NOW", NOW)
    d = tmp_path / "drives" / "drive-07"
    shot = SHOT
    write(d / "a.jpg", jpeg_bytes(texture(64, 48, 1), captured=shot, gps=True, orientation=6))
    write(d / "b.png", pil_bytes(texture(40, 30, 2), "PNG"))
    gray16 = (np.linspace(0, 65535, 50 * 20).reshape(20, 50)).astype(np.uint16)
    write(d / "c.tif", encode(gray16, ".tiff"))
    write(d / "d.png", encode(texture(30, 20, 3).astype(np.uint16) * 257, ".png"))
    write(d / "e.webp", pil_bytes(texture(33, 21, 4), "WEBP", quality=80))
    write(d / "f.tiff", pil_bytes(texture(24, 16, 5)[..., 0], "TIFF"))
    write(d / "notes.txt", b"not an image")
    return d


def test_folder_source_records_every_format(params_file: Path, drive: Path) -> None:
    project, report = collect(params_file, folder(drive))
    rows = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    assert sorted(rows) == ["a.jpg", "b.png", "c.tif", "d.png", "e.webp", "f.tiff"]
    assert report.ignored == 1  # notes.txt: counted, not an image
    a = rows["a.jpg"]
    # Stored 64x48 with orientation 6: a viewer shows it 48x64, the size every stage uses.
    assert (a.format, a.width, a.height, a.bit_depth, a.channels) == ("JPEG", 48, 64, 8, 3)
    assert (a.stored_width, a.stored_height) == (64, 48)
    assert (rows["b.png"].width, rows["b.png"].height, rows["b.png"].orientation) == (40, 30, 1)
    assert (a.orientation, a.captured_at, a.has_gps) == (6, "2026-05-04T10:30:15", True)
    assert a.session == "drive-07"  # derived from the folder
    assert (rows["c.tif"].format, rows["c.tif"].bit_depth, rows["c.tif"].channels) == (
        "TIFF",
        16,
        1,
    )
    assert (rows["d.png"].bit_depth, rows["d.png"].channels) == (16, 3)
    assert (rows["e.webp"].format, rows["f.tiff"].bit_depth) == ("WEBP", 8)
    assert rows["b.png"].has_gps is False and rows["b.png"].captured_at is None
    for r in rows.values():
        stored = raw(project) / r.path
        assert stored.read_bytes() == Path(r.source_path).read_bytes()
        assert r.path == f"images/{r.sha256[:2]}/{r.sha256}{stored.suffix}"
        assert r.collected_at == NOW
    # Retention counts from the capture time when it is known, else from the collection.
    assert datetime.fromisoformat(a.delete_after) == SHOT_EARLIEST + timedelta(days=180)
    for r in rows.values():
        if r is not a:
            kept = datetime.fromisoformat(r.delete_after) - datetime.fromisoformat(NOW)
            assert kept == timedelta(days=180)
    check_counts_add_up(project, report)


def test_retention_and_explicit_session_come_from_config(params_file: Path, drive: Path) -> None:
    project, _ = collect(
        params_file, folder(drive / "*.jpg", session="day-1"), "collect.retention_days=30"
    )
    (r,) = read_manifest(raw(project) / "manifest.jsonl")
    assert r.session == "day-1"
    assert datetime.fromisoformat(r.delete_after) == SHOT_EARLIEST + timedelta(days=30)


def test_exact_duplicates_across_sources_are_stored_once(params_file: Path, tmp_path: Path) -> None:
    data = jpeg_bytes(texture(64, 48, 9))
    write(tmp_path / "s1" / "x.jpg", data)
    write(tmp_path / "s2" / "copy.jpg", data)
    write(tmp_path / "s2" / "other.jpg", jpeg_bytes(texture(64, 48, 10)))
    sources = f"collect.sources=[{{uri:{tmp_path / 's1'}}},{{uri:{tmp_path / 's2'}}}]"
    project, report = collect(params_file, sources)
    assert (report.seen, report.images, report.duplicate) == (3, 2, 1)
    (dup,) = read_jsonl(raw(project) / "duplicates.jsonl")
    assert dup["source_path"].endswith("copy.jpg") and dup["duplicate_of"].endswith("x.jpg")
    assert len(list((raw(project) / "images").rglob("*.jpg"))) == 2
    check_counts_add_up(project, report)


def test_every_bad_file_is_quarantined_with_its_reason(params_file: Path, tmp_path: Path) -> None:
    d = tmp_path / "bad"
    good = jpeg_bytes(texture(120, 90, 1))
    write(d / "ok.jpg", good)
    write(d / "empty.jpg", b"")
    write(d / "truncated.jpg", good[: len(good) // 2])
    # Cut short, then given an end marker: Pillow's decoder pads the missing rows with grey.
    write(d / "padded.jpg", good[: len(good) // 2] + b"\xff\xd9")
    write(d / "garbage.jpg", b"this is text, not a JPEG" * 20)
    write(d / "png-named.jpg", pil_bytes(texture(20, 20, 2), "PNG"))
    write(d / "huge.png", pil_bytes(np.zeros((200, 300, 3), np.uint8), "PNG"))
    write(d / "animation.png", pil_bytes(texture(8, 8), "GIF"))
    project, report = collect(params_file, folder(d), "collect.max_pixels=50000")
    reasons = {
        Path(q["source_path"]).name: q for q in read_jsonl(raw(project) / "quarantine.jsonl")
    }
    assert {k: v["reason"] for k, v in reasons.items()} == {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "padded.jpg": "truncated",
        "garbage.jpg": "undecodable",
        "png-named.jpg": "wrong_extension",
        "huge.png": "too_many_pixels",
        "animation.png": "unsupported_format",
    }
    assert "PNG" in reasons["png-named.jpg"]["detail"]
    assert "collect.max_pixels=50000" in reasons["huge.png"]["detail"]
    assert report.images == 1 and report.quarantined == 7
    assert report.quarantined_by_reason["truncated"] == 2
    check_counts_add_up(project, report)
    # Quarantined files are never copied into the store.
    assert len(list((raw(project) / "images").rglob("*.*"))) == 1


def test_rerun_reads_nothing_new_and_picks_up_added_files(params_file: Path, drive: Path) -> None:
    project, first = collect(params_file, folder(drive))
    before = {p: p.stat().st_mtime_ns for p in (raw(project) / "images").rglob("*.*")}
    _, again = collect(params_file, folder(drive))
    assert (again.seen, again.new, again.unchanged) == (first.seen, 0, first.seen)
    assert {p: p.stat().st_mtime_ns for p in (raw(project) / "images").rglob("*.*")} == before
    rows = read_manifest(raw(project) / "manifest.jsonl")
    first_rows = {r.sha256: r.collected_at for r in rows}

    write(drive / "g.jpg", jpeg_bytes(texture(50, 50, 77)))
    _, third = collect(params_file, folder(drive))
    assert (third.new, third.unchanged, third.images) == (1, first.seen, first.images + 1)
    rows = read_manifest(raw(project) / "manifest.jsonl")
    # Retention clocks of images already stored do not restart.
    assert all(first_rows[r.sha256] == r.collected_at for r in rows if r.sha256 in first_rows)


def test_changed_and_deleted_files_update_the_store(params_file: Path, drive: Path) -> None:
    project, _ = collect(params_file, folder(drive))
    old = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    (drive / "b.png").unlink()
    write(drive / "a.jpg", jpeg_bytes(texture(64, 48, 123)))  # same name, new content
    _, report = collect(params_file, folder(drive))
    assert (report.removed, report.new) == (2, 1)
    rows = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    assert "b.png" not in rows and rows["a.jpg"].sha256 != old["a.jpg"].sha256
    assert not (raw(project) / old["b.png"].path).exists()
    assert not (raw(project) / old["a.jpg"].path).exists()


def test_missing_source_is_a_clear_error_and_keeps_previous_outputs(
    params_file: Path, drive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, _ = collect(params_file, folder(drive))
    manifest = (raw(project) / "manifest.jsonl").read_bytes()
    missing = tmp_path / "no-such-drive"
    code = main(["--params", str(params_file), "collect", folder(drive), folder(missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert "collect.sources[0]" in err and str(missing) in err and "does not exist" in err
    assert "Traceback" not in err
    assert (raw(project) / "manifest.jsonl").read_bytes() == manifest
    with pytest.raises(AnonlabError, match="matches no files"):
        collect(params_file, folder(tmp_path / "*.jpeg"))


def test_credentials_in_the_config_are_refused(
    params_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "collect.sources=[{uri:'s3://b/x',storage_options:{secret:hunter2}}]"
    assert main(["--params", str(params_file), "collect", source]) == 2
    err = capsys.readouterr().err
    assert "collect.sources[0].storage_options" in err and "environment" in err
    assert "'secret' looks like a credential" in err and "AWS_SECRET_ACCESS_KEY" in err
    assert "hunter2" not in err  # the key is named, its value never shown
    unknown = "+collect.sources.0.password=hunter3"
    assert main(["--params", str(params_file), "collect", unknown]) == 2
    err = capsys.readouterr().err
    assert "collect.sources[0].password: unknown key" in err and "hunter3" not in err


def test_synthetic_source_writes_images_and_label_studio_ground_truth(params_file: Path) -> None:
    project, report = collect(params_file, "collect.synthetic.count=6")
    assert report.seen == 6 and report.images == 6
    rows = read_manifest(raw(project) / "manifest.jsonl")
    assert {r.source for r in rows} == {"synthetic"}
    assert all(r.captured_at and r.session.startswith("synthetic") for r in rows)
    tasks = json.loads((raw(project) / "synthetic" / "labelstudio_export.json").read_text())
    assert len(tasks) == 6
    urls = {t["data"]["image"] for t in tasks}
    assert urls == {f"/data/local-files/?d=raw/{r.path}" for r in rows}
    # Growing the count appends images: the first six are unchanged, not re-collected.
    _, more = collect(params_file, "collect.synthetic.count=9")
    assert (more.images, more.new) == (9, 3)


def test_retention_counts_from_a_trusted_capture_time_and_follows_the_config(
    params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANONLAB_NOW", NOW)
    d = tmp_path / "drive"
    write(d / "shot.jpg", jpeg_bytes(texture(64, 48, 31), captured=SHOT))
    # A camera clock ahead of the collection is not trusted: retention counts from collect.
    write(d / "ahead.jpg", jpeg_bytes(texture(64, 48, 32), captured=datetime(2027, 1, 1)))
    project, _ = collect(params_file, folder(d))
    rows = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    assert datetime.fromisoformat(rows["shot.jpg"].delete_after) == SHOT_EARLIEST + timedelta(
        days=180
    )
    ahead = datetime.fromisoformat(rows["ahead.jpg"].delete_after)
    assert ahead == datetime.fromisoformat(NOW) + timedelta(days=180)

    # A shorter retention applies to what is stored already, on the next run; an image now
    # past it stays (`anonlab retention` erases it everywhere) and is reported.
    project, report = collect(params_file, folder(d), "collect.retention_days=20")
    rows = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    assert datetime.fromisoformat(rows["shot.jpg"].delete_after) == SHOT_EARLIEST + timedelta(
        days=20
    )
    assert rows["ahead.jpg"].collected_at == NOW
    assert (report.images, report.expired, report.overdue) == (2, 0, 1)
    assert "stored images past delete_after: 1; run `anonlab retention`" in report.summary()


def test_an_image_past_its_delete_after_when_found_is_counted_not_taken_in(
    params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANONLAB_NOW", NOW)
    d = tmp_path / "drive"
    write(d / "old-capture.jpg", jpeg_bytes(texture(64, 48, 33), captured=datetime(2025, 9, 1)))
    write(d / "fresh.jpg", jpeg_bytes(texture(64, 48, 34), captured=SHOT))
    project, report = collect(params_file, folder(d))
    assert (report.seen, report.images, report.expired, report.quarantined) == (2, 1, 1, 0)
    assert report.seen == report.images + report.duplicate + report.quarantined + report.expired
    (kept,) = read_manifest(raw(project) / "manifest.jsonl")
    assert kept.source_path.endswith("fresh.jpg")
    # Counted, and named nowhere: no row, no stored copy.
    assert json.loads((raw(project) / "metrics.json").read_text())["expired"] == 1
    assert "not taken in, past delete_after when found" in report.summary()
    assert not any(b"old-capture" in f.read_bytes() for f in raw(project).rglob("*") if f.is_file())
    assert len(list((raw(project) / "images").rglob("*.jpg"))) == 1


def _erase_by_hand(project: Project, sha256: str) -> None:
    """What an erasure leaves behind in the raw store: a tombstone, and no row or copy."""
    from data.erasure.keys import audit_key
    from data.erasure.subjects import Known
    from data.erasure.tombstones import Tombstones
    from data.manifest import write_manifest
    from data.stage_paths import StagePaths

    paths = StagePaths(project.artifacts)
    subject = Known.read(project.artifacts).subject(sha256)
    Tombstones.read(paths.audit.tombstones, audit_key()).add([subject], datetime.now(UTC))
    rows = read_manifest(paths.raw.manifest)
    write_manifest(paths.raw.manifest, [r for r in rows if r.sha256 != sha256])
    (paths.raw.folder / subject.path).unlink()


@pytest.mark.parametrize("erased_in_manifest", [False, True])
def test_erased_content_is_skipped_while_a_source_still_holds_it(
    params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, erased_in_manifest: bool
) -> None:
    monkeypatch.setenv("ANONLAB_AUDIT_KEY", "k" * 40)
    d = tmp_path / "drive"
    write(d / "person.jpg", jpeg_bytes(texture(64, 48, 35)))
    write(d / "copy-of-person.jpg", jpeg_bytes(texture(64, 48, 35)))
    write(d / "street.jpg", jpeg_bytes(texture(64, 48, 36)))
    project, _ = collect(params_file, folder(d))
    rows = {Path(r.source_path).name: r for r in read_manifest(raw(project) / "manifest.jsonl")}
    erased = rows.get("person.jpg") or rows["copy-of-person.jpg"]
    if erased_in_manifest:  # an erasure killed after its tombstone, before the raw store
        from data.erasure.keys import audit_key
        from data.erasure.subjects import Known
        from data.erasure.tombstones import Tombstones

        known = Known.read(project.artifacts)
        Tombstones.read(project.artifacts / "audit" / "tombstones.jsonl", audit_key()).add(
            [known.subject(erased.sha256)], datetime.now(UTC)
        )
    else:
        _erase_by_hand(project, erased.sha256)
    write(d / "new.jpg", jpeg_bytes(texture(64, 48, 37)))

    project, report = collect(params_file, folder(d))
    assert (report.seen, report.erased_skipped, report.images, report.duplicate) == (4, 2, 2, 0)
    assert report.new == 1  # the unrelated new image is taken in
    assert report.seen == report.images + report.duplicate + report.quarantined + 2
    assert json.loads((raw(project) / "metrics.json").read_text())["erased_skipped"] == 2
    assert "skipped, erased before (audit/tombstones.jsonl): 2" in report.summary()
    names = {Path(r.source_path).name for r in read_manifest(raw(project) / "manifest.jsonl")}
    assert names == {"street.jpg", "new.jpg"}
    # No file of the raw store names the erased content or where it was found.
    for f in (p for p in raw(project).rglob("*") if p.is_file()):
        assert erased.sha256 not in f.name
        data = f.read_bytes()
        assert erased.sha256.encode() not in data and b"person.jpg" not in data, f
    # Still skipped on the next run (nothing recorded that it was seen).
    _, again = collect(params_file, folder(d))
    assert (again.erased_skipped, again.images) == (2, 2)


def test_tombstones_need_the_audit_key_and_none_need_no_key(
    params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANONLAB_AUDIT_KEY", raising=False)
    d = tmp_path / "drive"
    write(d / "a.jpg", jpeg_bytes(texture(64, 48, 38)))
    tombstones = params_file.parent / "artifacts" / "audit" / "tombstones.jsonl"
    tombstones.parent.mkdir(parents=True)
    tombstones.write_text("")  # there, and empty: nothing was erased
    project, report = collect(params_file, folder(d))
    assert report.images == 1
    before = {p: p.read_bytes() for p in raw(project).rglob("*") if p.is_file()}

    tombstones.write_text(json.dumps({"sha256": "0" * 64, "erased_on": "2026-06-01"}) + "\n")
    write(d / "b.jpg", jpeg_bytes(texture(64, 48, 39)))
    with pytest.raises(AnonlabError, match="ANONLAB_AUDIT_KEY is not set"):
        collect(params_file, folder(d))
    assert {p: p.read_bytes() for p in raw(project).rglob("*") if p.is_file()} == before
