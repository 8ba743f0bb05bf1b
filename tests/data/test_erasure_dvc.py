"""The DVC cache and a local remote as erasure stores (data/erasure/dvc_cache.py), on a real git +
DVC repository: a canary image's tiles and the JSON that names it, in two committed versions,
erased from the cache and the remote, while everything else stays as it was."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo

from data.erasure.dvc_cache import dvc_stores
from data.erasure.stores import total
from data.erasure.subjects import Subject

CANARY = hashlib.sha256(b"the canary image").hexdigest()
OTHER = hashlib.sha256(b"another image").hexdigest()
SOURCE = "drive-7/canary-frame.jpg"
# The canary's pixels, as each version's tiles hold them.
CANARY_PIXELS = (b"canary-pixels-v1\xff\xd8", b"canary-pixels-v2\xff\xd8", b"canary-tile-v2-b\xff")

DVC_YAML = """stages:
  prepare:
    cmd: echo prepared
    outs:
      - out/tiles
      - out/train.json
      - out/model.bin
      - out/other.json
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def write_version(root: Path, tiles: dict[str, bytes], names: list[str]) -> None:
    folder = root / "out" / "tiles"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in tiles.items():
        (folder / name).write_bytes(data)
    coco = ",".join(f'{{"id": {i}, "sha256": "{s}"}}' for i, s in enumerate(names, 1))
    (root / "out" / "train.json").write_text(f'{{"images": [{coco}]}}')
    (root / "out" / "model.bin").write_bytes(bytes(range(256)) * 4)
    (root / "out" / "other.json").write_text(f'{{"images": ["{OTHER}"]}}')


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root, remote = tmp_path / "repo", tmp_path / "remote"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    with Repo.init(str(root)) as dvc, dvc.config.edit() as conf:
        conf["core"]["site_cache_dir"] = str(tmp_path / "site")
        conf["core"]["remote"] = "store"
        conf["remote"]["store"] = {"url": str(remote)}
    (root / "dvc.yaml").write_text(DVC_YAML)
    versions = [
        ({f"{CANARY}-0-0.jpg": CANARY_PIXELS[0], f"{OTHER}-0-0.jpg": b"other-pixels"}, [CANARY]),
        (
            {
                f"{CANARY}-0-0.jpg": CANARY_PIXELS[1],
                f"{CANARY}-512-0.jpg": CANARY_PIXELS[2],
                f"{OTHER}-0-0.jpg": b"other-pixels",
            },
            [CANARY, OTHER],
        ),
    ]
    for tiles, names in versions:
        write_version(root, tiles, names)
        with Repo(str(root)) as dvc:
            dvc.commit(f"{root}/dvc.yaml:prepare", force=True)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"version with {len(names)} images")
    git(root, "tag", "v2")
    with Repo(str(root)) as dvc:
        dvc.push(all_commits=True)
    return root


def every_file(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def holding_canary(files: dict[str, bytes]) -> list[str]:
    marks = (CANARY.encode(), SOURCE.encode(), *CANARY_PIXELS)
    return sorted(p for p, data in files.items() if CANARY in p or any(m in data for m in marks))


def test_erasing_the_canary_purges_cache_and_remote_and_keeps_the_rest(repo: Path) -> None:
    cache, remote = repo / ".dvc" / "cache", repo.parent / "remote"
    site = repo.parent / "site"
    canary = [Subject(CANARY, source_paths=(SOURCE,))]
    before = {"cache": every_file(cache), "remote": every_file(remote)}
    held = {k: holding_canary(v) for k, v in before.items()}
    # both versions' canary tiles (3 objects), COCO files (2) and listings naming the canary (2)
    assert len(held["cache"]) == len(held["remote"]) == 7
    assert holding_canary(every_file(site)), "the state database records the tiles' paths"

    stores = dvc_stores(repo)
    assert [s.name for s in stores] == ["dvc-cache", "dvc-remote:store"]
    found = {s.name: s.find(canary) for s in stores}
    objects = {n: sorted(h.where for h in f if h.what != "state row") for n, f in found.items()}
    assert objects["dvc-cache"] == held["cache"]
    assert objects["dvc-remote:store"] == held["remote"]
    assert any(h.what == "state row" for h in found["dvc-cache"])

    erased = {s.name: s.erase(canary) for s in stores}
    assert total(erased["dvc-remote:store"]) == 7
    after = {"cache": every_file(cache), "remote": every_file(remote)}
    for where, files in after.items():
        assert holding_canary(files) == [], where
        unrelated = {p: d for p, d in before[where].items() if p not in held[where]}
        assert files == unrelated, f"{where}: the other objects are there, unchanged"
    assert holding_canary(every_file(site)) == []

    again = dvc_stores(repo)
    assert [s.erase(canary) for s in again] == [[], []]
    assert [s.find(canary) for s in again] == [[], []]
