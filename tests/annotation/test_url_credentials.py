"""A user or password in annotation.url is refused, and never shown: not in an error, a log
line, or a file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from annotation.client import LabelStudio
from annotation.config import TOKEN_ENV, redact_url
from data.errors import AnonlabError
from serving.cli import main
from tests.conftest import REPO

PASSWORD = "pw-Url-5e3b1d/x@y"
URL = f"http://annotator:{PASSWORD}@127.0.0.1:9"  # port 9 (discard): nothing answers


def everything_written(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "command",
    [
        ["annotate", "push"],
        ["annotate", "status"],
        ["annotate", "pull", "annotation.source=server"],
    ],
    ids=["push", "status", "pull"],
)
def test_password_in_the_url_is_refused_and_never_shown(
    params_file: Path,
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "0" * 40)
    reviewed = params_file.parent / "artifacts" / "reviewed" / "manifest.jsonl"
    reviewed.parent.mkdir(parents=True)
    reviewed.write_text("")  # so that push and status get as far as the server
    caplog.set_level(logging.DEBUG)
    argv = ["--params", str(params_file), "-v", *command, f"annotation.url={URL}"]
    code = main([*argv, "annotation.retries=0", "annotation.timeout_s=1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "annotation.url: the URL 'http://***@127.0.0.1:9' carries a user or password" in err
    assert TOKEN_ENV in err and "environment" in err
    shown = out + err + caplog.text + everything_written(params_file.parent)
    assert "pw-Url" not in shown and "annotator:" not in shown


def test_config_refuses_the_url_before_writing_params(
    params_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = params_file.read_text()
    argv = ["--params", str(params_file), "config", "--conf", str(REPO / "conf")]
    assert main([*argv, f"annotation.url={URL}"]) == 2
    err = capsys.readouterr().err
    assert "annotation.url" in err and "pw-Url" not in err
    assert params_file.read_text() == before


def test_the_client_refuses_it_too() -> None:
    with pytest.raises(AnonlabError) as caught:
        LabelStudio(URL, "0" * 40)
    assert "'http://***@127.0.0.1:9'" in str(caught.value)
    assert "pw-Url" not in str(caught.value)
    assert redact_url("https://ls.example.org:8443/x") == "https://ls.example.org:8443/x"
