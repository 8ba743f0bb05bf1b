"""collect from S3: a real S3-compatible server (moto's server mode) on loopback."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from data.collect import run_collect
from data.manifest import read_manifest
from serving.params import load_project
from tests.images import jpeg_bytes, pil_bytes, texture

BUCKET = "campaign-7"


@pytest.fixture
def s3_endpoint(s3_server: str) -> str:
    """The session's S3 server on loopback (tests.servers)."""
    return s3_server


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> boto3.client:
    # Credentials come from the environment, as they must in production.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def collect_s3(params_file: Path, endpoint: str, uri: str, allow_empty: bool = False):
    options = (
        f"storage_options:{{endpoint_url:'{endpoint}'}},allow_empty:{str(allow_empty).lower()}"
    )
    source = f"collect.sources=[{{uri:'{uri}',{options}}}]"
    project = load_project(params_file, [source])
    p = project.params
    raw_dir = project.artifacts / "raw"
    return raw_dir, run_collect(p.collect, raw_dir, taxonomy=p.taxonomy, root=project.root)


def test_s3_prefix_is_collected_incrementally(params_file: Path, s3_endpoint: str, bucket) -> None:
    one, two = jpeg_bytes(texture(64, 48, 1)), pil_bytes(texture(40, 30, 2), "PNG")
    bucket.put_object(Bucket=BUCKET, Key="drive-3/000001.jpg", Body=one)
    bucket.put_object(Bucket=BUCKET, Key="drive-3/sub/000002.png", Body=two)
    bucket.put_object(Bucket=BUCKET, Key="drive-3/broken.jpg", Body=one[:100])
    bucket.put_object(Bucket=BUCKET, Key="drive-4/elsewhere.jpg", Body=one)

    raw_dir, report = collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/drive-3")
    assert (report.seen, report.images, report.quarantined) == (3, 2, 1)
    assert report.quarantined_by_reason == {"truncated": 1}
    rows = {r.source_path: r for r in read_manifest(raw_dir / "manifest.jsonl")}
    assert set(rows) == {
        f"s3://{BUCKET}/drive-3/000001.jpg",
        f"s3://{BUCKET}/drive-3/sub/000002.png",
    }
    first = rows[f"s3://{BUCKET}/drive-3/000001.jpg"]
    assert first.session == "drive-3" and first.source_version.startswith("etag:")
    assert (raw_dir / first.path).read_bytes() == one

    bucket.put_object(Bucket=BUCKET, Key="drive-3/000003.jpg", Body=jpeg_bytes(texture(64, 48, 3)))
    _, again = collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/drive-3/")
    assert (again.seen, again.new, again.unchanged) == (4, 1, 3)


def test_s3_glob_and_missing_prefix(params_file: Path, s3_endpoint: str, bucket) -> None:
    bucket.put_object(Bucket=BUCKET, Key="d/a.jpg", Body=jpeg_bytes(texture(64, 48, 1)))
    bucket.put_object(Bucket=BUCKET, Key="d/b.png", Body=pil_bytes(texture(40, 30, 2), "PNG"))
    _, report = collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/d/*.jpg")
    assert report.images == 1
    from data.errors import AnonlabError

    with pytest.raises(AnonlabError, match="does not exist"):
        collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/nothing-here/")


def test_s3_prefix_emptied_keeps_the_store(params_file: Path, s3_endpoint: str, bucket) -> None:
    bucket.put_object(Bucket=BUCKET, Key="e/a.jpg", Body=jpeg_bytes(texture(64, 48, 1)))
    raw_dir, _ = collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/e/")
    manifest = (raw_dir / "manifest.jsonl").read_bytes()
    bucket.delete_object(Bucket=BUCKET, Key="e/a.jpg")  # an object store has no empty folders
    from data.errors import AnonlabError

    with pytest.raises(AnonlabError, match=r"collect\.sources\[0\]\.allow_empty=true"):
        collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/e/")
    assert (raw_dir / "manifest.jsonl").read_bytes() == manifest
    _, report = collect_s3(params_file, s3_endpoint, f"s3://{BUCKET}/e/", allow_empty=True)
    assert (report.carried_over, report.removed) == (1, 0)
    assert (raw_dir / "manifest.jsonl").read_bytes() == manifest
