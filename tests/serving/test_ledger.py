"""The ledger of `anonlab blur` (serving/runtime/ledger.py) on a local folder and on a bucket of
a local S3 server: rows readable while the run goes on, an input's last row is its state, a row
cut short by a killed run is ignored, anything else that is not a row is refused, and pandas
reads the folder as it is."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pandas
import pytest

from serving.runtime.errors import ServingError
from serving.runtime.ledger import COLUMNS, FAILED, OK, SKIPPED, Ledger, Row


def _rows() -> list[Row]:
    return [
        Row("/in/a.jpg", OK, "a" * 64, regions=3, output="/out/a.jpg"),
        Row("/in/b.jpg", FAILED, "b" * 64, step="decode", error="OSError: truncated"),
        Row("/in/.DS_Store", SKIPPED, step="find", error="hidden: its name starts with '.'"),
    ]


def test_local_rows_are_readable_as_the_run_goes_and_the_last_row_wins(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "ledger")
    for row in _rows():
        first.append(row)
    # Not closed yet, as in a run that is still going (or was killed now): every row is there.
    assert Ledger(tmp_path / "ledger").read() == {r.input: r for r in _rows()}
    first.close()

    with Ledger(tmp_path / "ledger") as second:
        second.append(Row("/in/b.jpg", OK, "c" * 64, regions=0, output="/out/b.jpg"))
    state = Ledger(tmp_path / "ledger").read()
    assert state["/in/b.jpg"].status == OK and state["/in/a.jpg"] == _rows()[0]
    assert second.run > first.run  # names sort by time: later runs are read later

    frame = pandas.concat(
        pandas.read_json(f, lines=True) for f in sorted((tmp_path / "ledger").glob("*.jsonl"))
    )
    assert list(frame.columns) == sorted([*COLUMNS, "run", "time"])
    assert len(frame) == 4 and list(frame["status"]) == [OK, FAILED, SKIPPED, OK]


def test_a_row_cut_short_by_a_killed_run_is_ignored_anything_else_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ledger"
    with Ledger(folder) as ledger:
        ledger.append(_rows()[0])
    (name,) = [p.name for p in folder.iterdir()]
    with (folder / name).open("a") as f:
        f.write(json.dumps(_rows()[1].to_dict())[:40])  # killed while writing its line
    assert Ledger(folder).read() == {"/in/a.jpg": _rows()[0]}
    assert f"{name}: its last line is incomplete" in caplog.text

    (folder / "zz-notes.jsonl").write_text("not a row\n{}\n")
    with pytest.raises(ServingError, match=r"zz-notes\.jsonl line 1 is not a ledger row"):
        Ledger(folder).read()


def test_a_ledger_in_a_bucket_is_written_in_parts_and_read_back(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # how s3fs finds a MinIO or a test server
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="ledgers")

    ledger = Ledger("s3://ledgers/run-a/", flush_rows=2)
    ledger.check_writable()
    for row in _rows():
        ledger.append(row)
    # Two rows reached a part as the run went; the third waits for the next part or the end.
    assert set(Ledger("s3://ledgers/run-a/").read()) == {"/in/a.jpg", "/in/b.jpg"}
    ledger.close()
    assert Ledger("s3://ledgers/run-a/").read() == {r.input: r for r in _rows()}
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="ledgers")["Contents"]]
    assert keys == [f"run-a/{ledger.run}-000001.jsonl", f"run-a/{ledger.run}-000002.jsonl"]
