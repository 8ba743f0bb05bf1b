"""Erasure through a real pipeline run: a canary image (strongly magenta, so that any decoded copy
of it, down to a thumbnail or a crop, is recognised) and a near-duplicate of it are collected
from a folder source next to the synthetic one, reviewed, annotated and prepared by `dvc repro`
in a git + DVC repository with a local remote; then `anonlab erase` and `anonlab retention`."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import commands
from tests.conftest import REPO

SESSION = "canary-drive"
KEY = "test-audit-key-" + "0" * 32
FAR_FUTURE = "2100-01-01T00:00:00"
ENV = {"ANONLAB_AUDIT_KEY": KEY, "ANONLAB_PROGRESS": "0"}


def sh(cwd: Path, *argv: str) -> str:
    return commands.sh(cwd, *argv, env=ENV)


def magenta(rgb: np.ndarray) -> bool:
    """Whether a decoded image is (a piece of) a canary: most of its pixels magenta."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return float(((r - g > 60) & (b - g > 60)).mean()) > 0.5


def decoded_images(root: Path) -> Iterator[tuple[Path, np.ndarray]]:
    """Every image under `root`: image files, and base64 images inside text files (reports)."""
    for path in files(root):
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                yield path, np.asarray(img.convert("RGB"))
            continue
        except Exception:
            pass
        for m in re.finditer(rb"data:image/(?:jpeg|png);base64,([A-Za-z0-9+/=]+)", data):
            with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as img:
                yield path, np.asarray(img.convert("RGB"))


def files(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)


def canaries_in(root: Path) -> list[str]:
    return sorted({str(p.relative_to(root)) for p, rgb in decoded_images(root) if magenta(rgb)})


def write_canaries(folder: Path) -> tuple[list[dict], list[str]]:
    """The canary frame and a near-duplicate of it (one pixel over, a touch darker) as JPEGs of
    session SESSION, captured yesterday; their Label Studio tasks and their sha256."""
    from data.collect import LABEL_STUDIO_LOCAL_FILES
    from data.config import SyntheticConfig
    from data.image_info import STORE_EXTENSION
    from data.synthetic import generate_one, labelstudio_task
    from data.synthetic.plan import make_plan

    cfg = SyntheticConfig(**{**_synthetic_defaults(), "seed": 7})
    index = next(i for i in range(100) if make_plan(cfg, i).kind == "normal")
    img = generate_one(cfg, index)
    tint = np.array([255, 0, 255], dtype=float)
    img.image = (img.image * 0.35 + tint * 0.65).astype(np.uint8)
    img.captured_at = datetime.now() - timedelta(days=1)
    folder.mkdir(parents=True)
    tasks, shas = [], []
    for n, shift in enumerate((0, 1)):
        frame = np.roll(img.image, shift, axis=1)
        img.image = (frame * (1.0 - 0.03 * n)).astype(np.uint8)
        data = img.encode()
        (folder / f"canary-{n}.jpg").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        url = f"{LABEL_STUDIO_LOCAL_FILES}images/{sha[:2]}/{sha}{STORE_EXTENSION['JPEG']}"
        tasks.append(labelstudio_task(img, url, 100_000 + n))
        shas.append(sha)
    return tasks, shas


def _synthetic_defaults() -> dict:
    import yaml

    return yaml.safe_load((REPO / "conf/collect/default.yaml").read_text())["synthetic"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A git + DVC repo with a local remote, run up to prepare with the canaries in it, pushed;
    the repo, the remote and the canaries' sha256."""
    base = tmp_path_factory.mktemp("erasure")
    work, remote = base / "repo", base / "remote"
    work.mkdir()
    shutil.copytree(REPO / "conf", work / "conf")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    # The source is outside the repository: erasure leaves a source as it is (collect skips
    # what it still holds), so the scans below look at the repository and the remote only.
    tasks, shas = write_canaries(base / "canary-source" / SESSION)
    sources = f"collect.sources=[{{uri:synthetic}},{{uri:{base / 'canary-source'}}}]"
    sh(
        work,
        "anonlab",
        "config",
        "collect.synthetic.count=16",
        sources,
        "annotation.export_file=canary_export.json",
        "prepare.reference_sets=[{name:holdout,sessions:[synthetic-drive-001]}]",
    )
    sh(work, "git", "init", "-q")
    sh(work, "dvc", "init", "-q")
    sh(work, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(work, "dvc", "repro", "collect")
    synthetic = json.loads((work / "artifacts/raw/synthetic/labelstudio_export.json").read_text())
    (work / "canary_export.json").write_text(json.dumps(synthetic + tasks))
    sh(work, "dvc", "repro", "prepare")
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", "pipeline")
    sh(work, "dvc", "push")
    return work, remote, shas


def fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files(root)
    }


def needles(work: Path, shas: list[str]) -> list[bytes]:
    source = work.parent / "canary-source" / SESSION
    return [
        *(s.encode() for s in shas),
        SESSION.encode(),
        *(str(p).encode() for p in source.iterdir()),
    ]


def test_the_canary_is_in_the_stores_before_erasing(pipeline: tuple[Path, Path, list[str]]) -> None:
    work, _, _ = pipeline
    found = canaries_in(work / "artifacts")
    # The stored images, their tiles or whole-image entries, and the review report's thumbnails
    # of the near-duplicate pair.
    assert any(f.startswith("raw/images/") for f in found), found
    assert "reviewed/report.html" in found, found
    assert any(f.startswith("prepared/tiles/") for f in found), found


def test_erase_leaves_nothing_of_the_canary_and_a_crash_midway_changes_nothing(
    pipeline: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    work, remote, shas = pipeline
    before = fingerprint(work / "artifacts")
    # Two copies of the repo: one erased in one go, one killed after three stores and re-run.
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    shutil.copytree(work, clean, symlinks=True)
    shutil.copytree(work, crashed, symlinks=True)

    dry = sh(clean, "anonlab", "erase", "--session", SESSION, "--reason", "ticket 7", "--dry-run")
    assert "raw:" in dry and "tiles" in dry and "nothing was changed" in dry
    assert fingerprint(clean / "artifacts") == before

    done = sh(clean, "anonlab", "erase", "--session", SESSION, "--reason", "ticket 7")
    assert "erased: 2 image(s)" in done and "verification passed" in done

    _erase_killed_after(crashed, stores_done=3)
    assert list((crashed / "artifacts/audit/pending").iterdir()), "the killed erasure is pending"
    resumed = sh(crashed, "anonlab", "erase", "--session", SESSION, "--reason", "ticket 7")
    assert "interrupted erasure was completed" in resumed and "already erased" in resumed

    ignore = {"audit/erasure.jsonl"}
    assert {k: v for k, v in fingerprint(crashed / "artifacts").items() if k not in ignore} == {
        k: v for k, v in fingerprint(clean / "artifacts").items() if k not in ignore
    }

    for root in (clean, remote):
        leftover = [
            str(p)
            for p in files(root)
            if hashlib.sha256(p.read_bytes()).hexdigest() in shas
            or any(n in p.read_bytes() for n in needles(work, shas)[:2])
        ]
        assert not leftover, leftover
        assert not canaries_in(root), canaries_in(root)

    # The other images' files are as they were; only files that held the canaries changed.
    after = fingerprint(clean / "artifacts")
    changed = {k for k in before if after.get(k) != before[k]}
    held = {
        k
        for k in before
        if any(n in (work / "artifacts" / k).read_bytes() for n in needles(work, shas)[:2])
    }
    assert changed <= held | {k for k in before if shas[0] in k or shas[1] in k}
    for split in ("train", "val", "refs/holdout"):
        old = json.loads((work / f"artifacts/prepared/{split}.json").read_text())
        new = json.loads((clean / f"artifacts/prepared/{split}.json").read_text())
        kept = [i for i in old["images"] if i.get("sha256") not in shas]
        assert new["images"] == kept

    log = (clean / "artifacts/audit/erasure.jsonl").read_bytes()
    assert not any(n in log for n in needles(work, shas))
    entry = json.loads(log.splitlines()[-1])
    assert entry["status"] == "erased" and entry["verification"]["passed"]
    assert entry["reason"] == "ticket 7" and entry["images"] == 2

    again = sh(clean, "anonlab", "erase", "--session", SESSION, "--reason", "ticket 7")
    assert "already erased" in again

    # The source still holds both files: collect skips them, says so, and stores nothing.
    collected = sh(clean, "anonlab", "collect")
    assert "skipped, erased before (audit/tombstones.jsonl): 2" in collected
    manifest = (clean / "artifacts/raw/manifest.jsonl").read_text()
    assert not any(s in manifest for s in shas) and not canaries_in(clean / "artifacts/raw")


def _erase_killed_after(work: Path, stores_done: int) -> None:
    """Run the erasure in this process with a store that dies after `stores_done` stores, as a
    kill between two stores would leave it (each store's writes are atomic)."""
    from data.erasure.erase import Request, erase
    from data.erasure.keys import AuditKey
    from data.erasure.subjects import By, Known
    from serving.cli.erasure import stores
    from serving.params import load_project

    class Killed(Exception):
        pass

    class Dies:
        name = "dies"

        def find(self, subjects: object) -> list:
            return []

        def erase(self, subjects: object) -> list:
            raise Killed

    project = load_project(work / "params.yaml")
    subjects = Known.read(project.artifacts).matching(By.SESSION, [SESSION])
    request = Request("request", "ticket 7", tuple(subjects), {"session": (SESSION,)})
    listed = stores(project)
    with pytest.raises(Killed):
        erase(
            request,
            [*listed[:stores_done], Dies(), *listed[stores_done:]],
            project.stage_paths.audit,
            AuditKey(KEY.encode()),
            datetime.now(UTC),
        )


def test_retention_far_in_the_future_erases_every_image(
    pipeline: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    work, _, _ = pipeline
    copy = tmp_path / "repo"
    shutil.copytree(work, copy, symlinks=True)
    nothing = sh(copy, "anonlab", "retention", "--now", "2026-01-01")
    assert "no image is past its delete_after" in nothing
    done = sh(copy, "anonlab", "retention", "--now", FAR_FUTURE)
    assert "verification passed" in done
    artifacts = copy / "artifacts"
    assert not [p for p in files(artifacts / "raw/images")]
    assert not [p for p in files(artifacts / "prepared/tiles")]
    for split in ("train", "val", "refs/holdout"):
        assert not json.loads((artifacts / f"prepared/{split}.json").read_text())["images"]
    assert (artifacts / "raw/manifest.jsonl").read_text() == ""
    assert "<figure" not in (artifacts / "reviewed/report.html").read_text()
    assert not [p for p, _ in decoded_images(artifacts)]
