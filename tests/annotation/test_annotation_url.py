"""`annotation.url` left unset is the server `annotate serve` starts: it moves with
`annotation.serve.host` and `.port`; a URL that is set stays as it is."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from annotation.config import TOKEN_ENV, AnnotationConfig
from serving.cli import main
from tests.conftest import REPO

CONF = yaml.safe_load((REPO / "conf/annotation/default.yaml").read_text(encoding="utf-8"))


def cfg(**overrides: object) -> AnnotationConfig:
    return AnnotationConfig.model_validate({**CONF, **overrides})


def test_unset_url_follows_serve_host_and_port() -> None:
    assert CONF["url"] is None  # the committed default: whatever serve listens on
    assert cfg().url == "http://127.0.0.1:8080"
    assert cfg(serve={**CONF["serve"], "port": 8093}).url == "http://127.0.0.1:8093"
    # Listening on every interface, it is still reached on loopback; IPv6 in brackets.
    assert cfg(serve={**CONF["serve"], "host": "0.0.0.0"}).url == "http://127.0.0.1:8080"
    assert cfg(serve={**CONF["serve"], "host": "::1", "port": 9}).url == "http://[::1]:9"
    set_url = cfg(url="https://ls.example.org", serve={**CONF["serve"], "port": 8093})
    assert set_url.url == "https://ls.example.org"


def test_overriding_serve_port_moves_the_url_push_talks_to(
    params_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "0" * 40)
    reviewed = params_file.parent / "artifacts" / "reviewed" / "manifest.jsonl"
    reviewed.parent.mkdir(parents=True)
    reviewed.write_text("")  # so that push gets as far as the server
    caplog.set_level(logging.DEBUG)
    argv = ["--params", str(params_file), "annotate", "push", "annotation.serve.port=9"]
    # Port 9 (discard): nothing answers, and the error names where push looked.
    assert main([*argv, "annotation.retries=0", "annotation.timeout_s=1"]) == 2
    err = capsys.readouterr().err + caplog.text
    assert "127.0.0.1:9" in err and "8080" not in err
