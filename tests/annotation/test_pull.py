"""annotate pull from an export file: snapshots are immutable, failures write nothing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from annotation.pull import run_pull
from data.collect import run_collect
from data.errors import AnonlabError
from data.review import run_review
from serving.params import Project, load_project


@pytest.fixture
def project(params_file: Path) -> Project:
    """The synthetic source collected and reviewed: a real export file and a reviewed manifest."""
    project = load_project(params_file, ["collect.synthetic.count=10"])
    p = project.params
    run_collect(p.collect, project.artifacts / "raw", taxonomy=p.taxonomy, root=project.root)
    run_review(p.review, project.artifacts / "raw", project.artifacts / "reviewed")
    return project


def pull(project: Project, *overrides: str):
    if overrides:
        project = load_project(
            project.root / "params.yaml", ["collect.synthetic.count=10", *overrides]
        )
    p = project.params
    return run_pull(p.annotation, p.taxonomy, project.artifacts, project.root)


def annotations(project: Project) -> Path:
    return project.artifacts / "annotations"


def test_export_is_snapshotted_and_converted_for_the_reviewed_images(project: Project) -> None:
    report = pull(project)
    kept = (project.artifacts / "reviewed" / "manifest.jsonl").read_text().splitlines()
    coco = json.loads((annotations(project) / "coco.json").read_text())
    assert report.tasks == 10
    assert len(coco["images"]) == report.images == len(kept)
    assert report.new_snapshot and report.snapshot.parent == annotations(project) / "snapshots"
    export = project.root / project.params.annotation.export_file
    assert report.snapshot.read_bytes() == export.read_bytes()
    assert [c["name"] for c in coco["categories"]] == project.params.taxonomy.classes
    assert sum(report.objects.values()) == len(coco["annotations"]) > 0
    # Tasks whose image review rejected are reported with their ids, not dropped silently.
    rejected = len((project.artifacts / "reviewed" / "rejected.jsonl").read_text().splitlines())
    assert len(report.not_reviewed) == rejected
    issues = json.loads((annotations(project) / "pull_report.json").read_text())["issues"]
    assert sorted(i["task_id"] for i in issues if i["kind"] == "not_reviewed") == sorted(
        report.not_reviewed
    )


def test_pulling_the_same_export_again_reuses_its_snapshot(project: Project) -> None:
    first = pull(project)
    again = pull(project)
    assert again.snapshot == first.snapshot and not again.new_snapshot
    assert len(list((annotations(project) / "snapshots").iterdir())) == 1


def test_a_malformed_export_writes_nothing(project: Project, tmp_path: Path) -> None:
    first = pull(project)
    coco = (annotations(project) / "coco.json").read_bytes()
    bad = tmp_path / "broken.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(AnonlabError, match=r"list of tasks.*nothing written"):
        pull(project, f"annotation.export_file={bad}")
    bad.write_text('[{"id": 1, "data": {}}, "not a task"]')
    with pytest.raises(AnonlabError, match=r"task #1 .* not an object"):
        pull(project, f"annotation.export_file={bad}")
    bad.write_text("[{")
    with pytest.raises(AnonlabError, match="not a Label Studio JSON export"):
        pull(project, f"annotation.export_file={bad}")
    assert (annotations(project) / "coco.json").read_bytes() == coco
    assert list((annotations(project) / "snapshots").iterdir()) == [first.snapshot]


def test_missing_inputs_say_what_to_run(params_file: Path, tmp_path: Path) -> None:
    project = load_project(params_file)
    with pytest.raises(AnonlabError, match="anonlab review"):
        pull(project)


def test_a_server_that_cannot_be_reached_writes_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pull(project)
    coco = (annotations(project) / "coco.json").read_bytes()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("ANONLAB_LS_TOKEN", "0123456789abcdef")
    overrides = ("annotation.source=server", f"annotation.url={url}", "annotation.retries=1")
    with pytest.raises(AnonlabError) as error:
        pull(project, *overrides, "annotation.timeout_s=2")
    assert url in str(error.value) and "anonlab annotate serve" in str(error.value)
    assert "0123456789abcdef" not in str(error.value)
    assert (annotations(project) / "coco.json").read_bytes() == coco
    assert list((annotations(project) / "snapshots").iterdir()) == [first.snapshot]
