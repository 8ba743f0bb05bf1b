"""The DVC cache and a remote (a local folder; a bucket on a local S3 server) as erasure stores
(data/erasure/dvc_cache.py), on a real git + DVC repository: a canary image's tiles and the JSON
that names it, in versions on a branch's history and on an experiment ref, erased from the cache
and the remote, while everything else stays as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import boto3
import pytest
from dvc.repo import Repo

from data.erasure.dvc_cache import dvc_stores
from data.erasure.stores import total
from data.erasure.subjects import Subject
from tests.data.test_collect_s3 import s3_endpoint  # noqa: F401 (a local S3 server)

CANARY = hashlib.sha256(b"the canary image").hexdigest()
OTHER = hashlib.sha256(b"another image").hexdigest()
SOURCE = "drive-7/canary-frame.jpg"
# The canary's pixels, as each version's tiles hold them.
CANARY_PIXELS = (b"canary-v1\xff", b"canary-v2\xff", b"canary-v2-b\xff", b"canary-exp\xff")

DVC_YAML = """stages:
  prepare:
    cmd: echo prepared
    outs:
      - out/tiles
      - out/train.json
      - out/model.bin
      - out/other.json
"""


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    return done.stdout.decode().strip()


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


class Remote:
    """The test's DVC remote: a local folder, or a bucket on a local S3 server."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.folder = tmp_path / "remote"
        if kind == "s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            monkeypatch = request.getfixturevalue("monkeypatch")
            # Credentials come from the environment, as DVC reads them in production.
            for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "x")):
                monkeypatch.setenv(var, value)
            monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            self.bucket = f"dvc-{tmp_path.name[-20:].lower().replace('_', '-')}"
            self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            self.client.create_bucket(Bucket=self.bucket)
            self.config = {"url": f"s3://{self.bucket}/store", "endpointurl": endpoint}
        else:
            self.config = {"url": str(self.folder)}

    def files(self) -> dict[str, bytes]:
        if self.kind == "local":
            return every_file(self.folder)
        listed = self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            o["Key"].removeprefix("store/"): self.client.get_object(
                Bucket=self.bucket, Key=o["Key"]
            )["Body"].read()
            for o in listed
        }


@pytest.fixture(params=["local", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    return Remote(request.param, tmp_path, request)


@pytest.fixture
def repo(tmp_path: Path, remote: Remote) -> Path:
    """Two versions on main (the older one only in git history), a third on an experiment ref
    only; all committed to the cache and pushed."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    with Repo.init(str(root)) as dvc, dvc.config.edit() as conf:
        conf["core"]["site_cache_dir"] = str(tmp_path / "site")
        conf["core"]["remote"] = "store"
        conf["remote"]["store"] = remote.config
    (root / "dvc.yaml").write_text(DVC_YAML)
    other = {f"{OTHER}-0-0.jpg": b"other-pixels"}
    versions = [
        ({f"{CANARY}-0-0.jpg": CANARY_PIXELS[0], **other}, [CANARY]),
        ({f"{CANARY}-0-0.jpg": CANARY_PIXELS[1], f"{CANARY}-512-0.jpg": CANARY_PIXELS[2], **other},
         [CANARY, OTHER]),
        ({f"{CANARY}-0-0.jpg": CANARY_PIXELS[3], **other}, [OTHER, CANARY]),
    ]  # fmt: skip
    with Repo(str(root)) as dvc:
        for n, (tiles, names) in enumerate(versions, 1):
            if n == 3:  # an experiment: its commit is on refs/exps only
                git(root, "checkout", "-q", "--detach")
            write_version(root, tiles, names)
            dvc.commit(f"{root}/dvc.yaml:prepare", force=True)
            git(root, "add", "-A")
            git(root, "commit", "-q", "-m", f"version {n}")
        experiment = git(root, "rev-parse", "HEAD")
        git(root, "update-ref", "refs/exps/ab/cdef0123/exp-canary", experiment)
        git(root, "checkout", "-q", "main")
        dvc.push(all_commits=True, revs=[experiment])
    return root


def every_file(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def holding_canary(files: dict[str, bytes]) -> list[str]:
    marks = (CANARY.encode(), SOURCE.encode(), *CANARY_PIXELS)
    return sorted(p for p, data in files.items() if CANARY in p or any(m in data for m in marks))


def test_erasing_the_canary_purges_cache_and_remote_and_keeps_the_rest(
    repo: Path, remote: Remote
) -> None:
    cache, site = repo / ".dvc" / "cache", repo.parent / "site"
    canary = [Subject(CANARY, source_paths=(SOURCE,))]
    before = {"cache": every_file(cache), "remote": remote.files()}
    held = {k: holding_canary(v) for k, v in before.items()}
    # each version's canary tiles (1 + 2 + 1), COCO file (3) and listing naming the canary (3)
    assert len(held["cache"]) == len(held["remote"]) == 10
    assert holding_canary(every_file(site)), "DVC's state database records the tiles' paths"

    stores = dvc_stores(repo)
    assert [s.name for s in stores] == ["dvc-cache", "dvc-remote:store"]
    found = {s.name: s.find(canary) for s in stores}
    objects = {n: sorted(h.where for h in f if h.what != "state row") for n, f in found.items()}
    assert objects == {"dvc-cache": held["cache"], "dvc-remote:store": held["remote"]}
    assert any(h.what == "state row" for h in found["dvc-cache"])
    # a scan of every object (for objects no version references) finds the same
    scanned = {s.name: s.find(canary) for s in dvc_stores(repo, full_scan=True)}
    assert {n: sorted(h.where for h in f if h.what != "state row") for n, f in scanned.items()} == (
        objects
    )

    erased = {s.name: s.erase(canary) for s in stores}
    assert total(erased["dvc-remote:store"]) == 10
    after = {"cache": every_file(cache), "remote": remote.files()}
    for where, files in after.items():
        assert holding_canary(files) == [], where
        unrelated = {p: d for p, d in before[where].items() if p not in held[where]}
        assert files == unrelated, f"{where}: the other objects are there, unchanged"
        assert len(unrelated) == 3  # the other image's tile, other.json, model.bin
    assert holding_canary(every_file(site)) == []

    again = dvc_stores(repo)
    assert [s.erase(canary) for s in again] == [[], []]
    assert [s.find(canary) for s in again] == [[], []]


@pytest.mark.parametrize("odd", ["", "{", "}", '{"md5": "x", "relpath": "y"}'])
def test_a_listing_gives_the_same_entries_cut_out_as_parsed_whole(odd: str) -> None:
    """A `.dir` listing as DVC writes it: the entries around a match are cut out and parsed, and
    a relpath holding a brace sends the search back to the whole listing; either way, the same
    entries as filtering every entry."""
    from data.erasure.dvc_cache import _TEXT_ENDS, Needles, _entries, _entries_around

    rows = [
        {"md5": f"{i:032x}", "relpath": name}
        for i, name in enumerate(
            [f"{OTHER}-0-0.jpg", f"{CANARY}-0-0.jpg", "index.JSON", f"a/{odd}{CANARY}-512-0.jpg",
             f"{odd}b.json", "notes.txt.bak", f"{OTHER}-512-0.jpg"]
        )
    ]  # fmt: skip
    listing = json.dumps(rows, sort_keys=True).encode()
    needles = Needles([Subject(CANARY)])
    every = list(_entries(listing))
    naming = {(r, m) for r, m in every if needles.in_name(r)}
    text = {(r, m) for r, m in every if r.lower().endswith((".json", ".txt"))}
    assert len(naming) == 2 and len(text) == 2
    assert naming <= set(_entries_around(listing, needles.marks))
    assert text <= set(_entries_around(listing, _TEXT_ENDS, fold_case=True))
    if not odd:  # nothing else was parsed
        assert set(_entries_around(listing, needles.marks)) == naming
        assert set(_entries_around(listing, _TEXT_ENDS, fold_case=True)) == text
