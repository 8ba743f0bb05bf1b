"""A real Label Studio for the annotation tests: started once per session, on a free loopback
port, with its own data folder and a temporary artifacts folder as its local-files root."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from annotation.config import TOKEN_ENV
from annotation.server import RunningServer, start_server

# Fixed test credentials; tests check that neither secret leaks into logs or output.
USERNAME = "annotator@anonlab.test"
PASSWORD = "pw-Secret-7f3a9c21"
TOKEN = "0123456789abcdef0123456789abcdef7e57c0de"


@dataclass(frozen=True)
class LabelStudioUnderTest:
    server: RunningServer
    url: str
    data_dir: Path
    artifacts: Path  # the server's local-files document root
    username: str
    password: str
    token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioUnderTest]:
    base = tmp_path_factory.mktemp("label-studio")
    data_dir, artifacts = base / "data", base / "artifacts"
    with start_server(
        "127.0.0.1", free_port(), data_dir, artifacts, USERNAME, PASSWORD, TOKEN
    ) as server:
        yield LabelStudioUnderTest(
            server, server.url, data_dir, artifacts, USERNAME, PASSWORD, TOKEN
        )


@pytest.fixture
def ls(label_studio: LabelStudioUnderTest, monkeypatch: pytest.MonkeyPatch) -> LabelStudioUnderTest:
    """The session's Label Studio, with its token in the environment as push and pull read it."""
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    return label_studio
