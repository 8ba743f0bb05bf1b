"""Erasure from a real MLflow SQLite store, its runs logged as the project logs them
(training.tracking): one with an image's artifacts and a tag naming it, one whose param names
it, one unrelated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest

from data.erasure.subjects import Subject
from data.errors import AnonlabError
from tests.images import jpeg_bytes, texture
from training.erasure import MlflowStore, mlflow_stores
from training.tracking import Tracker


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def log_run(root: Path, name: str, artifacts: dict[str, bytes], **kwargs: object) -> str:
    """A run with `artifacts` (file name -> bytes) logged under `gallery/`."""
    inputs = root.parent / f"in-{name}"
    inputs.mkdir()
    for file_name, data in artifacts.items():
        (inputs / file_name).write_bytes(data)
    with Tracker(
        root, experiment="erasure", run_name=name, system_metrics=False, **kwargs
    ) as tracker:  # type: ignore[arg-type]
        tracker.log_metrics({"loss": 0.5}, 0)
        tracker.log_artifact(inputs, "gallery")
    assert tracker.run_id is not None
    return tracker.run_id


def test_erasure_removes_the_images_artifacts_tags_and_runs_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    root = tmp_path / "project"
    root.mkdir()
    canary = jpeg_bytes(texture(64, 48, 4242))
    sha = hashlib.sha256(canary).hexdigest()
    source = "/cam/erasure/canary-0001.jpg"
    subject = Subject(sha, f"images/{sha[:2]}/{sha}.jpg", ("s1",), (source,))
    other = jpeg_bytes(texture(64, 48, 7))
    named = log_run(
        root,
        "named",
        {"miss.jpg": canary, "predictions.json": f'{{"image": "{sha}"}}'.encode()},
        params={"lr": 0.1},
        tags={"anonlab.example_image": sha},
    )
    by_param = log_run(root, "by-param", {}, params={"source": source}, tags={})
    unrelated = log_run(
        root,
        "unrelated",
        {"miss.jpg": other, "predictions.json": b'{"image": "' + b"0" * 64 + b'"}'},
        params={"lr": 0.1},
        tags={"anonlab.example_image": "0" * 64},
    )
    [store] = mlflow_stores(root)
    assert isinstance(store, MlflowStore) and store.uri.endswith("project/mlflow.db")
    client = mlflow.MlflowClient(store.uri)
    unrelated_artifacts = {
        p: b for p, b in files_under(root / "mlruns").items() if unrelated in p.as_posix()
    }
    assert len(unrelated_artifacts) == 2
    before = files_under(root)
    assert any(sha.encode() in b for b in before.values())
    assert any(source.encode() in b for p, b in before.items() if p.name == "mlflow.db")

    found = store.find([subject])
    assert {h.where for h in found} >= {
        f"mlruns/{p.relative_to(root / 'mlruns').as_posix()}"
        for p in before
        if named in p.as_posix() and p.parent.name == "gallery"
    }
    erased = store.erase([subject])
    assert erased

    after = files_under(root)
    for path, data in after.items():
        assert sha.encode() not in data and source.encode() not in data, path
    assert {p: b for p, b in after.items() if unrelated in p.as_posix()} == unrelated_artifacts
    run = client.get_run(unrelated)
    assert run.data.tags["anonlab.example_image"] == "0" * 64 and run.data.params["lr"] == "0.1"
    kept = client.get_run(named)  # tags can go; the run stays, without the tag
    assert "anonlab.example_image" not in kept.data.tags and kept.data.params["lr"] == "0.1"
    with pytest.raises(mlflow.MlflowException):  # a param is immutable: its run is gone
        client.get_run(by_param)

    assert store.find([subject]) == [] and store.erase([subject]) == []


def test_a_store_that_is_not_sqlite_keeps_the_erasure_pending() -> None:
    store = MlflowStore("http://127.0.0.1:5000")
    for action in (store.find, store.erase):
        with pytest.raises(AnonlabError, match=r"not a SQLite database.*stays pending"):
            action([Subject("ab" * 32)])


def test_a_project_without_runs_holds_nothing(tmp_path: Path) -> None:
    store = MlflowStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert store.find([Subject("ab" * 32)]) == [] and store.erase([Subject("ab" * 32)]) == []
