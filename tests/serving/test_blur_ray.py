"""`anonlab blur --engine ray` on the session's local Ray cluster: a bucket of a local S3 server
anonymized into another prefix with its ledger in the bucket, failing closed per image; an
inventory of local files; and `--resume` doing only what is not ok."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import boto3
import pytest

from serving.cli import main as cli_main
from serving.runtime.ledger import FAILED, OK, SKIPPED, Ledger
from tests.images import jpeg_bytes, texture, write

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture
def bucket(s3_server: str, request: pytest.FixtureRequest) -> boto3.client:
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = f"blur-{request.node.name[-30:].lower().replace('_', '-')}"
    client.create_bucket(Bucket=name)
    client.bucket = name
    return client


def _put(client: boto3.client, key: str, data: bytes) -> None:
    client.put_object(Bucket=client.bucket, Key=key, Body=data)


def _get(client: boto3.client, key: str) -> bytes:
    return client.get_object(Bucket=client.bucket, Key=key)["Body"].read()


def _keys(client: boto3.client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=client.bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def test_a_bucket_is_anonymized_with_a_complete_ledger_and_resumed(
    shared_artifact: Path, bucket: boto3.client, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {f"in/day1/{n}.jpg": jpeg_bytes(texture(96, 64, seed=n)) for n in (1, 2)}
    whole = jpeg_bytes(texture(96, 64, seed=3))
    cut, empty = "in/day2/cut.jpg", "in/day2/empty.jpg"
    for key, data in {**good, cut: whole[: len(whole) // 2], empty: b""}.items():
        _put(bucket, key, data)
    _put(bucket, "in/.DS_Store", b"finder")  # hidden: skipped
    _put(bucket, "in/notes.txt", b"shot list")  # not an image by its extension: skipped
    _put(bucket, "out/day2/cut.jpg", b"an earlier run's output")  # must not survive its failure
    url = f"s3://{bucket.bucket}"
    argv = [
        "blur", f"{url}/in/", "--engine", "ray", "--model", str(shared_artifact),
        "--out", f"{url}/out/", "--ledger", f"{url}/ledger/", "--actors", "1", "--sidecar",
    ]  # fmt: skip

    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert "found 6 items: anonymized 2 images" in captured.out
    assert "2 FAILED" in captured.out and "2 skipped" in captured.out
    # Outputs for the good images only, each with its sidecar; the stale output is gone.
    outputs = [k.replace("in/", "out/") for k in good]
    assert _keys(bucket, "out/") == sorted([*outputs, *(k + ".json" for k in outputs)])
    rows = Ledger(f"{url}/ledger/").read()
    assert len(rows) == 6  # one row per input
    by_name = {key.rsplit("/", 1)[1]: row for key, row in rows.items()}
    for key, data in good.items():
        row = rows[f"{url}/{key}"]
        assert row.status == OK and row.input_sha256 == hashlib.sha256(data).hexdigest()
        assert row.output == f"{url}/{key.replace('in/', 'out/')}"
        assert json.loads(_get(bucket, row.output[len(url) + 1 :] + ".json"))["input"] == row.input
    assert (by_name["cut.jpg"].status, by_name["cut.jpg"].step) == (FAILED, "decode")
    assert (by_name["empty.jpg"].status, by_name["empty.jpg"].step) == (FAILED, "decode")
    assert by_name[".DS_Store"].status == by_name["notes.txt"].status == SKIPPED
    assert f"failed: {url}/{cut}: decode: " in captured.err

    # The cut file is uploaded whole: --resume does the two that failed, and only them.
    _put(bucket, cut, whole)
    assert cli_main([*argv, "--resume"]) == 1  # the empty file still fails
    captured = capsys.readouterr()
    assert "anonymized 1 images" in captured.out and "2 already anonymized" in captured.out
    rows = Ledger(f"{url}/ledger/").read()
    second = {row.input for row in rows.values() if row.status != SKIPPED} - {
        f"{url}/{k}" for k in good
    }
    assert second == {f"{url}/{cut}", f"{url}/{empty}"}
    lines = [line for part in _keys(bucket, "ledger/") for line in _get(bucket, part).splitlines()]
    runs = {json.loads(line)["run"] for line in lines}
    assert len(runs) == 2
    assert rows[f"{url}/{cut}"].status == OK and rows[f"{url}/{empty}"].status == FAILED
    assert "out/day2/cut.jpg" in _keys(bucket, "out/")


def test_an_inventory_of_local_files_into_a_local_folder(
    shared_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [
        write(tmp_path / "photos" / "a" / "x.jpg", jpeg_bytes(texture(80, 60, seed=4))),
        write(tmp_path / "photos" / "b" / "y.jpg", jpeg_bytes(texture(80, 60, seed=5))),
    ]
    inventory = write(tmp_path / "keys.txt", f"# drive 7\n{images[0]}\n\n{images[1]}\n".encode())
    out = tmp_path / "out"
    argv = ["blur", "--engine", "ray", "--inventory", str(inventory), "--model",
            str(shared_artifact), "--out", str(out), "--actors", "1"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "anonymized 2 images" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "a/x.jpg",
        "b/y.jpg",
    ]
    rows = Ledger(out / ".anonlab-ledger").read()
    assert {Path(k).name: r.status for k, r in rows.items()} == {"x.jpg": OK, "y.jpg": OK}


def test_urls_need_the_ray_engine_and_nothing_is_written(
    shared_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = cli_main(["blur", "s3://bucket/in/", "--model", str(shared_artifact), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "need --engine ray" in err and "Traceback" not in err
    assert not out.exists()


def test_a_bad_model_is_refused_by_the_driver_before_any_actor(
    shared_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(shared_artifact, broken)
    weights = next(p for p in broken.iterdir() if p.suffix in (".onnx", ".safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # one byte changed
    write(tmp_path / "in" / "x.jpg", jpeg_bytes(texture(64, 48, seed=1)))
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--engine", "ray", "--model", str(broken), "--out",
            str(out)]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert weights.name in err and "sha256" in err and "Traceback" not in err
    assert not out.exists()
