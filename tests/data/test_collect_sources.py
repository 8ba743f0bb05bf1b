"""collect on sources it cannot list completely (empty, unreadable folders) and on files that
change while it reads them: nothing stored is lost, and what happened is recorded."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from data.atomic import read_jsonl
from data.collect import run_collect
from data.manifest import read_manifest
from serving.cli import main
from serving.params import load_project
from tests.data.collecting import check_counts_add_up, collect, folder, raw
from tests.images import jpeg_bytes, texture, write

# Longer than any file name may be (NAME_MAX 255); a chain of them outgrows PATH_MAX (4096).
LONG_NAME = "d" * 250
PATH_MAX = 4096


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def manifest_rows(project: Any) -> dict[str, dict[str, Any]]:
    return {Path(r["source_path"]).name: r for r in read_jsonl(raw(project) / "manifest.jsonl")}


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A mounted share: two images, a copy of one, and a broken file."""
    d = tmp_path / "share"
    a = jpeg_bytes(texture(64, 48, 1))
    write(d / "drive-1" / "a.jpg", a)
    write(d / "drive-1" / "copy-of-a.jpg", a)
    write(d / "drive-2" / "b.jpg", jpeg_bytes(texture(64, 48, 2)))
    write(d / "drive-2" / "broken.jpg", a[:200])
    return d


def unmount(share: Path) -> None:
    """What an unmounted share looks like: its mount point, empty."""
    shutil.rmtree(share)
    share.mkdir()


def test_empty_source_is_an_error_that_changes_nothing(
    params_file: Path, share: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, _ = collect(params_file, folder(share))
    before = snapshot(raw(project))
    unmount(share)
    code = main(["--params", str(params_file), "collect", folder(share)])
    err = capsys.readouterr().err
    assert code == 2
    assert "collect.sources[0]" in err and str(share) in err and "holds no image files" in err
    assert "collect.sources[0].allow_empty=true" in err and "Traceback" not in err
    assert snapshot(raw(project)) == before  # manifest, images, quarantine, metrics: untouched


def test_allow_empty_goes_on_and_keeps_what_the_empty_source_stored(
    params_file: Path, share: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    write(other / "c.jpg", jpeg_bytes(texture(64, 48, 3)))
    write(other / "d.jpg", jpeg_bytes(texture(64, 48, 4)))
    sources = f"collect.sources=[{{uri:{share},allow_empty:true}},{{uri:{other}}}]"
    project, first = collect(params_file, sources)
    rows = manifest_rows(project)
    dups = read_jsonl(raw(project) / "duplicates.jsonl")
    quarantine = read_jsonl(raw(project) / "quarantine.jsonl")
    assert first.incomplete_sources == {} and first.carried_over == 0

    unmount(share)
    (other / "d.jpg").unlink()  # gone from a source that was listed completely
    write(other / "e.jpg", jpeg_bytes(texture(64, 48, 5)))
    _, report = collect(params_file, sources)
    after = manifest_rows(project)
    for name in ("a.jpg", "b.jpg"):  # the empty source's records, exactly as they were
        assert after[name] == rows[name]
        assert (raw(project) / after[name]["path"]).is_file()
    assert read_jsonl(raw(project) / "duplicates.jsonl") == dups
    assert read_jsonl(raw(project) / "quarantine.jsonl") == quarantine
    assert "d.jpg" not in after and not (raw(project) / rows["d.jpg"]["path"]).exists()
    assert "e.jpg" in after
    assert (report.carried_over, report.removed, report.new) == (4, 1, 1)
    assert report.incomplete_sources == {str(share): 4}
    metrics = json.loads((raw(project) / "metrics.json").read_text())
    assert metrics["incomplete_sources"] == {str(share): 4}
    check_counts_add_up(project, report)

    # Taking the source out of the config is how its images leave the store.
    _, dropped = collect(params_file, folder(other))
    assert dropped.removed == 2 and set(manifest_rows(project)) == {"c.jpg", "e.jpg"}


@pytest.fixture
def unlistable(share: Path) -> Iterator[Path]:
    """Make `share/drive-2` a folder that cannot be listed, its files inside; yields it.

    chmod 000 where it takes effect; as root, where it does not, the files move to the end of
    a chain of folders whose path is longer than PATH_MAX, which no one can list.
    """
    target = share / "drive-2"
    target.chmod(0)
    if not os.access(target, os.R_OK):
        yield target
        target.chmod(0o755)
        return
    target.chmod(0o755)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    while len(str(target)) + depth * (len(LONG_NAME) + 1) <= PATH_MAX:
        os.mkdir(LONG_NAME, dir_fd=fd)
        inner = os.open(LONG_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, depth = inner, depth + 1
    for name in ("b.jpg", "broken.jpg"):
        os.rename(target / name, name, dst_dir_fd=fd)
    os.close(fd)
    yield target
    shutil.rmtree(target)  # works below PATH_MAX too: it removes through folder handles


def test_unreadable_folder_is_an_error_that_changes_nothing(
    params_file: Path, share: Path, capsys: pytest.CaptureFixture[str], request: Any
) -> None:
    project, _ = collect(params_file, folder(share))
    before = snapshot(raw(project))
    request.getfixturevalue("unlistable")
    code = main(["--params", str(params_file), "collect", folder(share)])
    err = capsys.readouterr().err
    assert code == 2
    assert "collect.sources[0]: 1 folder(s) of" in err and "cannot be listed" in err
    assert str(share / "drive-2") in err
    assert "collect.sources[0].allow_unreadable=true" in err and "Traceback" not in err
    assert snapshot(raw(project)) == before
    # A glob needs the folders it can match, and only those.
    assert main(["--params", str(params_file), "collect", folder(share / "**" / "*.jpg")]) == 2
    assert "cannot be listed" in capsys.readouterr().err
    _, report = collect(params_file, folder(share / "drive-1" / "*.jpg"))
    assert report.unlisted == 0 and report.images == 1


def test_allow_unreadable_records_the_folder_and_keeps_its_images(
    params_file: Path, share: Path, request: Any
) -> None:
    source = folder(share, allow_unreadable="true")
    project, first = collect(params_file, source)
    rows = manifest_rows(project)
    request.getfixturevalue("unlistable")
    write(share / "drive-1" / "new.jpg", jpeg_bytes(texture(64, 48, 6)))
    _, report = collect(params_file, source)
    after = manifest_rows(project)
    assert after["b.jpg"] == rows["b.jpg"] and (raw(project) / rows["b.jpg"]["path"]).is_file()
    assert "new.jpg" in after  # what could be listed is collected
    (folder_record,) = [
        q for q in read_jsonl(raw(project) / "quarantine.jsonl") if q["reason"] == "unlisted"
    ]
    assert folder_record["source_path"].startswith(str(share / "drive-2"))
    assert "cannot be listed" in folder_record["detail"]
    # broken.jpg's quarantine record is carried over with b.jpg's manifest record.
    assert (report.unlisted, report.carried_over, report.removed) == (1, 2, 0)
    assert report.quarantined_by_reason == {"unlisted": 1, "truncated": 1}
    assert report.incomplete_sources == {str(share): 2}
    check_counts_add_up(project, report)
    assert first.seen + 1 == report.seen + report.carried_over  # new.jpg; b.jpg, broken.jpg


class RewrittenWhileRead(LocalFileSystem):
    """Local files, with another writer that replaces a file's content just as it is read."""

    protocol = ("rewritten",)
    replacements: ClassVar[dict[str, bytes]] = {}

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any):
        new = self.replacements.pop(self._strip_protocol(path), None)
        if new is not None:
            Path(self._strip_protocol(path)).write_bytes(new)
        return super().cat_file(path, start, end, **kw)


def test_file_rewritten_between_listing_and_reading(params_file: Path, tmp_path: Path) -> None:
    fsspec.register_implementation("rewritten", RewrittenWhileRead, clobber=True)
    src = tmp_path / "drive"
    write(src / "a.jpg", jpeg_bytes(texture(64, 48, 1)))
    bigger = jpeg_bytes(texture(128, 96, 2))
    RewrittenWhileRead.replacements = {str(src / "a.jpg"): bigger}
    project = load_project(params_file, [f"collect.sources=[{{uri:'rewritten://{src}'}}]"])
    p = project.params

    def run() -> Any:
        return run_collect(p.collect, raw(project), taxonomy=p.taxonomy, root=project.root)

    run()
    (r,) = read_manifest(raw(project) / "manifest.jsonl")
    assert r.size == len(bigger) == (raw(project) / r.path).stat().st_size
    assert (r.width, r.height) == (128, 96)
    assert r.source_version == "changed-while-read"
    again = run()  # read again, since what was read is not what was listed
    (r,) = read_manifest(raw(project) / "manifest.jsonl")
    assert (again.unchanged, again.new) == (0, 0)
    assert r.size == len(bigger) and r.source_version.startswith(f"{len(bigger)}:")
    assert run().unchanged == 1  # settled: incremental again
