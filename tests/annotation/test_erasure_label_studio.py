"""Erasure from Label Studio against the session's real server (conftest.py): the image's tasks
are deleted through the API with their annotations and predictions, the server's SQLite file is
vacuumed, a pull snapshot is rewritten without the task and stays read-only."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests

from annotation.client import LabelStudio, connect
from annotation.config import AnnotationConfig
from annotation.erasure import FREE_PAGES, LabelStudioFiles, label_studio_stores
from annotation.pull import image_sha256, run_pull
from annotation.push import run_push
from data.erasure.stores import total
from data.erasure.subjects import Subject
from data.errors import AnonlabError
from tests.annotation.conftest import LabelStudioUnderTest, free_port
from tests.annotation.server_project import TAXONOMY, annotation_cfg, review
from tests.images import jpeg_bytes, store_jpeg, texture

TITLE = "erasure"
IMAGE_ONLY = '<View><Image name="image" value="$image"/></View>'


def server_cfg(ls: LabelStudioUnderTest) -> AnnotationConfig:
    """Push's project on the session's server, whose data folder is on this machine."""
    serve = {"host": "127.0.0.1", "port": 8080, "data_dir": str(ls.data_dir)}
    return annotation_cfg(ls.url, TITLE, serve=serve)


def annotate(ls: LabelStudioUnderTest, task: int) -> None:
    region = {
        "id": "a1",
        "from_name": "rectangle",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0,
                  "rectanglelabels": ["license_plate"]},
    }  # fmt: skip
    response = requests.post(
        f"{ls.url}/api/tasks/{task}/annotations",
        json={"result": [region], "lead_time": 5.0},
        headers={"Authorization": f"Token {ls.token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text


def by_image(client: LabelStudio, project: int) -> dict[str, dict[str, Any]]:
    return {str(image_sha256(t)): t for t in client.export_tasks(project)}


def data_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and p.name != "label-studio.log"]


def holding(files: list[Path], needle: bytes) -> list[Path]:
    return [p for p in files if needle in p.read_bytes()]


def test_erasure_deletes_the_images_tasks_and_leaves_none_of_its_bytes(
    ls: LabelStudioUnderTest,
) -> None:
    artifacts = ls.artifacts
    # Images of their own (no other test's task names them), with predictions from push.
    records = [
        store_jpeg(
            artifacts,
            jpeg_bytes(texture(96 + i, 72, 8100 + i)),
            width=96 + i,
            height=72,
            source_path=f"/erasure-cam/{i}.jpg",
            session="erasure",
        )
        for i in range(3)
    ]
    review(artifacts, records)
    cfg = server_cfg(ls)
    project = run_push(cfg, TAXONOMY, artifacts).project_id
    client = connect(cfg)
    tasks = by_image(client, project)
    erased, kept = records[0], records[1:]
    annotate(ls, tasks[erased.sha256]["id"])
    annotate(ls, tasks[kept[0].sha256]["id"])
    snapshot = run_pull(cfg, TAXONOMY, artifacts, artifacts.parent).snapshot
    before = by_image(client, project)
    subject = Subject(erased.sha256, erased.path, (erased.session,), (erased.source_path,))
    needle = erased.sha256.encode()
    assert before[erased.sha256]["annotations"] and before[erased.sha256]["predictions"]
    assert holding(data_files(ls.data_dir), needle)  # the database (and pull's export) name it
    assert needle in snapshot.read_bytes()

    stores = label_studio_stores(artifacts, cfg, root=artifacts.parent)
    assert [s.name for s in stores] == ["label-studio-files", "label-studio"]
    assert all(s.find([subject]) for s in stores)
    erased_held = {s.name: s.erase([subject]) for s in stores}

    assert total(erased_held["label-studio"]) >= 1
    after = by_image(client, project)
    assert erased.sha256 not in after
    assert after == {k: v for k, v in before.items() if k != erased.sha256}
    assert after[kept[0].sha256]["annotations"] and after[kept[1].sha256]["predictions"]
    # The database is vacuumed: no file of the data folder holds the sha256 any more.
    assert holding(data_files(ls.data_dir), needle) == []
    # The snapshot keeps its name and mode, without the task.
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o444
    redacted = json.loads(snapshot.read_bytes())
    assert sorted(str(image_sha256(t)) for t in redacted) == sorted(r.sha256 for r in kept)
    assert needle not in snapshot.read_bytes()

    assert [s.find([subject]) for s in stores] == [[], []]
    assert [s.erase([subject]) for s in stores] == [[], []]
    client.close()


def test_a_configured_server_that_does_not_answer_keeps_the_erasure_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANONLAB_LS_TOKEN", "0123456789abcdef")
    url = f"http://127.0.0.1:{free_port()}"
    cfg = annotation_cfg(url, TITLE, retries=0, timeout_s=2)
    server = label_studio_stores(tmp_path, cfg, root=tmp_path)[1]
    subject = Subject("ab" * 32)
    for action in (server.find, server.erase):
        with pytest.raises(AnonlabError, match="stays pending") as raised:
            action([subject])
        assert url in str(raised.value) and "runs again with the server up" in str(raised.value)


def test_with_no_server_configured_the_server_store_holds_nothing(tmp_path: Path) -> None:
    cfg = annotation_cfg("http://127.0.0.1:9", TITLE).model_copy(update={"source": "export"})
    server = label_studio_stores(tmp_path, cfg, root=tmp_path)[1]
    assert server.find([Subject("ab" * 32)]) == [] and server.erase([Subject("ab" * 32)]) == []


def test_an_export_file_is_rewritten_without_the_images_tasks(tmp_path: Path) -> None:
    shas = ["ab" * 32, "cd" * 32]
    tasks = [
        {"id": i, "data": {"image": f"/data/local-files/?d=raw/images/{s[:2]}/{s}.jpg"}}
        for i, s in enumerate(shas)
    ]
    export = tmp_path / "raw" / "synthetic" / "labelstudio_export.json"
    export.parent.mkdir(parents=True)
    export.write_text(json.dumps(tasks))
    unrelated = tmp_path / "annotations" / "snapshots" / "20260101T000000Z-0.json"
    unrelated.parent.mkdir(parents=True)
    unrelated.write_text(json.dumps(tasks[1:]))
    unrelated.chmod(0o444)
    untouched = unrelated.read_bytes(), unrelated.stat().st_mtime_ns
    store = LabelStudioFiles(tmp_path)

    assert [(h.where, h.count) for h in store.find([Subject(shas[0])])] == [
        ("raw/synthetic/labelstudio_export.json", 1)
    ]
    store.erase([Subject(shas[0])])
    assert json.loads(export.read_text()) == tasks[1:]
    assert (unrelated.read_bytes(), unrelated.stat().st_mtime_ns) == untouched
    assert store.erase([Subject(shas[0])]) == []


def test_an_export_that_is_not_a_task_list_is_removed_whole(tmp_path: Path) -> None:
    sha = "ef" * 32
    snapshot = tmp_path / "annotations" / "snapshots" / "20260101T000000Z-1.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text('{"broken": "' + sha)
    store = LabelStudioFiles(tmp_path)
    assert [h.what for h in store.find([Subject(sha)])] == ["export naming the image (removed)"]
    store.erase([Subject(sha)])
    assert not snapshot.exists()


def test_a_task_outside_pushs_project_is_reported_until_it_is_gone(
    ls: LabelStudioUnderTest,
) -> None:
    sha = hashlib.sha256(b"erasure: a task of another project").hexdigest()
    cfg = server_cfg(ls)
    client = connect(cfg)
    other = client.create_project(
        "erasure-other", '<View><Image name="image" value="$image"/></View>'
    )
    url = f"/data/local-files/?d=raw/images/{sha[:2]}/{sha}.jpg"
    client.import_tasks(other, [{"data": {"image": url}}])
    server = label_studio_stores(ls.artifacts, cfg, root=ls.artifacts.parent)[1]
    subject = Subject(sha)
    [database] = ls.data_dir.glob("*.sqlite3")

    [held] = server.find([subject])
    assert held.where == str(database) and held.what.startswith("1 task row(s) naming the image")
    assert server.erase([subject]) == []  # not push's project: the server's own to decide
    assert server.find([subject]) == [held]

    client.request("DELETE", f"/api/projects/{other}")
    server.erase([subject])
    assert server.find([subject]) == [] and sha.encode() not in database.read_bytes()
    client.close()


def test_a_deleted_rows_bytes_are_vacuumed_even_with_no_server_configured(tmp_path: Path) -> None:
    """SQLite built without secure delete (this machine's zeroes deleted rows) keeps a deleted
    task's bytes in free pages: the local database counts as holding the image until VACUUM."""
    sha = hashlib.sha256(b"erasure: a deleted task").hexdigest()
    data_dir = tmp_path / ".labelstudio"
    data_dir.mkdir()
    database = data_dir / "label_studio.sqlite3"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("PRAGMA secure_delete = OFF")
        connection.execute("CREATE TABLE task (id INTEGER PRIMARY KEY, data TEXT)")
        rows = [(json.dumps({"image": f"{i}-{sha if i == 7 else 'x'}" * 40}),) for i in range(50)]
        connection.executemany("INSERT INTO task (data) VALUES (?)", rows)
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("PRAGMA secure_delete = OFF")
        connection.execute("DELETE FROM task WHERE id = 8")
    assert sha.encode() in database.read_bytes()
    cfg = annotation_cfg("http://127.0.0.1:9", TITLE).model_copy(update={"source": "export"})
    server = label_studio_stores(tmp_path, cfg, root=tmp_path)[1]

    assert [h.what for h in server.find([Subject(sha)])] == [FREE_PAGES]
    assert [h.what for h in server.erase([Subject(sha)])] == ["deleted rows' bytes (vacuumed)"]
    assert sha.encode() not in database.read_bytes()
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT COUNT(*) FROM task").fetchone() == (49,)
    assert server.find([Subject(sha)]) == [] and server.erase([Subject(sha)]) == []
