"""Push, status and the API client against a real Label Studio (see conftest.py), and the
uncertain-first ordering on hand-made detections."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from annotation.client import LabelStudio, connect, jwt_type
from annotation.config import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV
from annotation.haar_preannotation import Detection, image_uncertainty
from annotation.labeling_config import labeling_config
from annotation.mining import queue_order, queue_score
from annotation.push import STATE_FILE, image_url, run_push
from annotation.server import credentials_from_env, start_server
from annotation.status import run_status
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.manifest import ManifestRecord
from tests.annotation.conftest import LabelStudioUnderTest, free_port
from tests.annotation.server_project import TAXONOMY, annotation_cfg, review
from tests.images import jpeg_bytes, store_jpeg, texture


def add_images(artifacts: Path, seeds: list[int]) -> list[ManifestRecord]:
    """Store one small JPEG per seed in the raw store; their manifest records."""
    return [
        store_jpeg(
            artifacts,
            jpeg_bytes(texture(160 + seed, 120, seed)),
            width=160 + seed,
            height=120,
            source_path=f"/cam/{seed}.jpg",
            session="s1",
        )
        for seed in seeds
    ]


def assert_no_secrets(text: str, ls: LabelStudioUnderTest) -> None:
    assert ls.token not in text
    assert ls.password not in text


def test_push_imports_reviewed_images_once_uncertain_first(
    ls: LabelStudioUnderTest, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = annotation_cfg(ls.url, "push-once", batch_size=2)
    records = add_images(ls.artifacts, [1, 2, 3, 4, 5])
    review(ls.artifacts, records)

    report = run_push(cfg, TAXONOMY, ls.artifacts)
    print(report.summary())
    assert (report.project_created, report.imported, report.already) == (True, 5, 0)
    assert report.uncertainty == sorted(report.uncertainty, reverse=True)
    state = json.loads((ls.artifacts / STATE_FILE).read_text(encoding="utf-8"))
    assert state["project_id"] == report.project_id

    client = connect(cfg)
    assert client.find_project("push-once") == report.project_id
    tasks = sorted(client.export_tasks(report.project_id), key=lambda t: t["id"])
    assert {t["data"]["image"] for t in tasks} == {image_url(r) for r in records}
    predictions = [
        requests.get(
            f"{ls.url}/api/predictions",
            params={"task": t["id"]},
            headers={"Authorization": f"Token {ls.token}"},
            timeout=10,
        ).json()
        for t in tasks
    ]
    for p in predictions:
        assert len(p) == 1
        assert p[0]["model_version"].startswith("haar-opencv-")
        assert 0.0 <= p[0]["score"] <= 1.0
        for region in p[0]["result"]:
            assert region["to_name"] == "image"
            assert region["from_name"] in ("ellipse", "rectangle")
    # Imported uncertain first: task ids follow increasing prediction score (1 - uncertainty).
    scores = [p[0]["score"] for p in predictions]
    assert scores == sorted(scores)
    assert client.get_project(report.project_id)["model_version"].startswith("haar-opencv-")

    again = run_push(cfg, TAXONOMY, ls.artifacts)
    assert (again.project_created, again.config_updated, again.imported) == (False, False, 0)
    assert again.project_id == report.project_id

    review(ls.artifacts, [*records, *add_images(ls.artifacts, [6])])
    third = run_push(cfg, TAXONOMY, ls.artifacts)
    assert (third.imported, third.already) == (1, 5)
    assert len(client.task_image_urls(report.project_id)) == 6

    # The image behind a task is served by Label Studio from the artifacts folder.
    url = ls.url + tasks[0]["data"]["image"]
    response = requests.get(url, headers={"Authorization": f"Token {ls.token}"}, timeout=10)
    assert response.status_code == 200
    image = ls.artifacts / "raw" / tasks[0]["data"]["image"].split("d=raw/", 1)[1]
    assert response.content == image.read_bytes()

    out = capsys.readouterr()
    assert "push: 5 new tasks" in out.out
    assert_no_secrets(out.out + out.err + caplog.text, ls)
    assert_no_secrets((ls.artifacts / STATE_FILE).read_text(encoding="utf-8"), ls)


def test_taxonomy_change_updates_the_labeling_config(ls: LabelStudioUnderTest) -> None:
    cfg = annotation_cfg(ls.url, "push-taxonomy")
    review(ls.artifacts, add_images(ls.artifacts, [7]))
    first = run_push(cfg, TAXONOMY, ls.artifacts)
    wider = TaxonomyConfig(classes=[*TAXONOMY.classes, "animal"], keypoints=TAXONOMY.keypoints)
    second = run_push(cfg, wider, ls.artifacts)
    assert second.project_id == first.project_id
    assert second.config_updated
    assert 'alias="animal"' in connect(cfg).get_project(first.project_id)["label_config"]


def test_a_project_labelled_before_labels_named_their_tool_takes_the_new_interface(
    ls: LabelStudioUnderTest,
) -> None:
    cfg = annotation_cfg(ls.url, "push-old-labels")
    [record] = add_images(ls.artifacts, [8])
    review(ls.artifacts, [record])
    # The interface as it was: one bare class name per label, in every tool's row.
    new_xml = labeling_config(TAXONOMY.classes, TAXONOMY.keypoints)
    old_xml = re.sub(r'value="([^"]+) \([a-z]+\)" alias="\1"', r'value="\1"', new_xml)
    assert 'value="person"' in old_xml and "alias=" not in old_xml
    client = connect(cfg)
    project_id = client.create_project("push-old-labels", old_xml)
    client.import_tasks(project_id, [{"data": {"image": image_url(record)}}])
    [task] = client.tasks(project_id)
    person = {
        "id": "p1",
        "from_name": "polygon",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": record.width,
        "original_height": record.height,
        "value": {"points": [[10, 10], [40, 10], [40, 80]], "polygonlabels": ["person"]},
    }
    response = requests.post(
        f"{ls.url}/api/tasks/{task['id']}/annotations",
        json={"result": [person]},
        headers={"Authorization": f"Token {ls.token}"},
        timeout=10,
    )
    assert response.status_code == 201
    # Label Studio refuses a config that drops a label annotations use; the aliases keep them.
    report = run_push(cfg, TAXONOMY, ls.artifacts)
    assert (report.project_id, report.config_updated, report.imported) == (project_id, True, 0)
    assert client.get_project(project_id)["label_config"].count("person (polygon)") == 1
    [exported] = client.export_tasks(project_id)
    [region] = exported["annotations"][0]["result"]
    assert region["value"]["polygonlabels"] == ["person"]


def test_login_page_offers_no_sign_up_and_the_form_is_refused(ls: LabelStudioUnderTest) -> None:
    session = requests.Session()
    login = session.get(f"{ls.url}/user/login/", timeout=10)
    assert login.status_code == 200 and "Log in" in login.text
    assert "/user/signup" not in login.text
    session.get(f"{ls.url}/user/signup/", timeout=10)  # the CSRF cookie, as a browser gets it
    refused = session.post(
        f"{ls.url}/user/signup/",
        data={
            "csrfmiddlewaretoken": session.cookies.get("csrftoken", ""),
            "email": "stranger@anonlab.test",
            "password": "pw-Stranger-1a2b3c4d",
            "allow_newsletters": "false",
        },
        headers={"Referer": f"{ls.url}/user/signup/"},
        allow_redirects=False,
        timeout=10,
    )
    assert refused.status_code == 403
    users = connect(annotation_cfg(ls.url, "sign-up")).users()
    assert "stranger@anonlab.test" not in users.values()
    assert ls.username in users.values()  # the admin, created from the environment as before


def test_annotations_are_exported_and_counted(
    ls: LabelStudioUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = annotation_cfg(ls.url, "status-counts")
    records = add_images(ls.artifacts, [11, 12, 13])
    review(ls.artifacts, records[:2])
    report = run_push(cfg, TAXONOMY, ls.artifacts)
    client = connect(cfg)
    task_ids = sorted(t["id"] for t in client.tasks(report.project_id))
    plate = {
        "from_name": "rectangle",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 171,
        "original_height": 120,
        "value": {
            "x": 10,
            "y": 20,
            "width": 15,
            "height": 5,
            "rotation": 0,
            "rectanglelabels": ["license_plate"],
        },
    }
    headers = {"Authorization": f"Token {ls.token}"}
    # As the labeling UI does: submit one task, skip the other.
    submitted = requests.post(
        f"{ls.url}/api/tasks/{task_ids[0]}/annotations",
        json={"result": [plate], "lead_time": 4.2},
        headers=headers,
        timeout=10,
    )
    skipped = requests.post(
        f"{ls.url}/api/tasks/{task_ids[1]}/annotations",
        json={"result": [], "was_cancelled": True},
        headers=headers,
        timeout=10,
    )
    assert submitted.status_code == skipped.status_code == 201

    exported = {t["id"]: t for t in client.export_tasks(report.project_id)}
    annotation = exported[task_ids[0]]["annotations"][0]
    assert annotation["result"][0]["value"]["rectanglelabels"] == ["license_plate"]
    assert exported[task_ids[1]]["annotations"][0]["was_cancelled"] is True

    review(ls.artifacts, records)  # one more reviewed image, not pushed yet
    status = run_status(cfg, ls.artifacts)
    p = status.progress
    assert (p.tasks, p.annotated, p.skipped, p.untouched, p.annotations) == (2, 1, 1, 0, 1)
    assert p.by_annotator == {ls.username: 1}
    assert (status.reviewed, status.not_pushed) == (3, 1)
    print(status.summary())
    out = capsys.readouterr().out
    assert "annotated: 1" in out and "not yet in Label Studio: 1" in out
    assert_no_secrets(out, ls)


def test_personal_access_token_is_exchanged_for_access_tokens(
    ls: LabelStudioUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = requests.post(
        f"{ls.url}/api/token/", headers={"Authorization": f"Token {ls.token}"}, timeout=10
    )
    assert response.status_code in (200, 201), response.text
    pat = response.json()["token"]
    assert jwt_type(pat) == "refresh"
    monkeypatch.setenv(TOKEN_ENV, pat)
    cfg = annotation_cfg(ls.url, "pat-project")
    client = connect(cfg)
    project = client.create_project(
        "pat-project", "<View><Image name='image' value='$image'/></View>"
    )
    assert client.find_project("pat-project") == project
    # An expired access token is exchanged again.
    client._access = "expired.access.token"
    assert client.find_project("pat-project") == project


def test_wrong_token_names_the_variable_not_the_value(ls: LabelStudioUnderTest) -> None:
    wrong = "ffffffffffffffffffffffffffffffffdeadbeef"
    client = LabelStudio(ls.url, wrong, timeout_s=5, retries=1)
    with pytest.raises(AnonlabError) as e:
        client.find_project("anything")
    assert TOKEN_ENV in str(e.value)
    assert wrong not in str(e.value)
    assert wrong not in repr(client)


def test_missing_token_and_missing_review(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = annotation_cfg(f"http://127.0.0.1:{free_port()}", "nothing")
    with pytest.raises(AnonlabError, match="run `anonlab review` first"):
        run_push(cfg, TAXONOMY, tmp_path)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(AnonlabError, match=TOKEN_ENV):
        connect(cfg)


def test_server_down_is_a_clear_error_after_bounded_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = LabelStudio(url, "0" * 40, timeout_s=1, retries=1)
    started = time.monotonic()
    with pytest.raises(AnonlabError) as e:
        client.find_project("anonlab")
    assert time.monotonic() - started < 10
    message = str(e.value)
    assert url in message
    assert "anonlab annotate serve" in message
    assert "2 attempt(s)" in message


def test_server_log_and_environment_keep_secrets(
    ls: LabelStudioUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_text = (ls.data_dir / "label-studio.log").read_text(encoding="utf-8", errors="replace")
    assert "/health" in log_text
    assert_no_secrets(log_text, ls)
    # The server is ours: its command line carries neither secret.
    cmdline = Path(f"/proc/{ls.server.process.pid}/cmdline")
    if cmdline.exists():
        assert_no_secrets(cmdline.read_bytes().decode(errors="replace"), ls)

    for name in (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(USERNAME_ENV, ls.username)
    with pytest.raises(AnonlabError) as e:
        credentials_from_env()
    assert PASSWORD_ENV in str(e.value) and TOKEN_ENV in str(e.value)
    monkeypatch.setenv(PASSWORD_ENV, ls.password)
    monkeypatch.setenv(TOKEN_ENV, ls.token)
    creds = credentials_from_env()
    assert_no_secrets(repr(creds), ls)


def test_start_refuses_a_port_in_use(ls: LabelStudioUnderTest, tmp_path: Path) -> None:
    port = int(ls.url.rsplit(":", 1)[1])
    with pytest.raises(AnonlabError, match="already in use"):
        start_server("127.0.0.1", port, tmp_path / "d", tmp_path / "a", "u@x.y", "pw", "t" * 40)


def face(x: float, confidence: float) -> Detection:
    return Detection("face", x, 10.0, 20.0, 20.0, confidence)


def test_uncertain_first_ordering() -> None:
    sure = [face(0, 0.95)]
    coin_flip = [face(0, 0.5)]
    contested = [face(0, 0.9)]  # the second cascade sees nothing there
    nothing: list[Detection] = []
    u = {
        "sure": image_uncertainty(sure, sure, [face(1, 0.9)]),
        "coin_flip": image_uncertainty(coin_flip, coin_flip, [face(0, 0.6)]),
        "contested": image_uncertainty(contested, contested, [face(200, 0.5)]),
        "nothing": image_uncertainty(nothing, nothing, nothing),
    }
    assert u["nothing"] == 0.5
    assert u["sure"] < u["nothing"] < u["contested"]
    assert u["sure"] < u["coin_flip"]
    names = list(u)
    order = [names[i] for i in queue_order([u[n] for n in names], [0] * len(names))]
    assert order[0] == "contested" and order[-1] == "sure"
    # Ties keep manifest order.
    assert queue_order([0.5, 0.5, 0.7], [0, 0, 0]) == [2, 0, 1]
    # Agreement of both cascades leaves only the confidence term.
    assert image_uncertainty(sure, sure, sure) == pytest.approx((1 - abs(2 * 0.95 - 1)) / 2)
    assert np.isclose(image_uncertainty([], [], [face(0, 0.4)]), (0.5 + 1.0) / 2)


def test_serve_runs_label_studio_with_the_project_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess
    import sys

    from annotation import server as server_module
    from annotation.server import RunningServer, serve

    started: dict[str, object] = {}

    def fake_start(
        host: str, port: int, data_dir: Path, root: Path, user: str, password: str, token: str
    ) -> RunningServer:
        started.update(host=host, port=port, data_dir=data_dir, root=root)
        started.update(secrets=(user, password, token))
        process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
        return RunningServer(f"http://127.0.0.1:{free_port()}", process, tmp_path / "ls.log")

    monkeypatch.setattr(server_module, "start_server", fake_start)
    cfg = annotation_cfg("http://127.0.0.1:8080", "serve", retries=0, timeout_s=1)
    for name in (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AnonlabError, match=f"{USERNAME_ENV}, {PASSWORD_ENV}, {TOKEN_ENV}"):
        serve(cfg, tmp_path, tmp_path / "artifacts")

    monkeypatch.setenv(USERNAME_ENV, "admin@anonlab.test")
    monkeypatch.setenv(PASSWORD_ENV, "pw-Secret-serve")
    monkeypatch.setenv(TOKEN_ENV, "c0ffee" * 6)
    caplog.set_level(logging.DEBUG)
    assert serve(cfg, tmp_path, tmp_path / "artifacts") == 0
    assert started["data_dir"] == tmp_path / ".labelstudio"
    assert started["root"] == tmp_path / "artifacts"
    assert (started["host"], started["port"]) == ("127.0.0.1", 8080)
    assert started["secrets"] == ("admin@anonlab.test", "pw-Secret-serve", "c0ffee" * 6)
    assert "pw-Secret-serve" not in caplog.text and "c0ffee" * 6 not in caplog.text
    # The fake listens elsewhere than annotation.url, which is set: push would miss it.
    assert "annotation.url is http://127.0.0.1:8080: push, pull and status talk to it" in (
        caplog.text
    )


GRACE_HOPPER = Path(np.__file__).parents[1] / "matplotlib/mpl-data/sample_data/grace_hopper.jpg"


@pytest.mark.skipif(not GRACE_HOPPER.exists(), reason="matplotlib's sample photo not installed")
def test_haar_pre_annotates_a_real_face(tmp_path: Path) -> None:
    from annotation.haar_preannotation import HaarDetector

    data = GRACE_HOPPER.read_bytes()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "g.jpg").write_bytes(data)
    record = ManifestRecord(
        "0" * 64, "images/g.jpg", "t", "t", "s", 512, 600, "JPEG", 8, 3, len(data), "v", "", ""
    )
    prediction = HaarDetector().predict(record, tmp_path, TAXONOMY)
    faces = [r for r in prediction.result if r["from_name"] == "ellipse"]
    assert faces, prediction
    # Her face is at about (51 %, 36 %) of the photo.
    assert any(abs(f["value"]["x"] - 51) < 8 and abs(f["value"]["y"] - 36) < 8 for f in faces), (
        faces
    )
    assert all(f["original_width"] == 512 and f["original_height"] == 600 for f in faces)
    assert 0.0 < prediction.uncertainty < 1.0
    assert prediction.as_task_prediction()["score"] == pytest.approx(
        queue_score(prediction.uncertainty, 0), abs=1e-4
    )
