"""Shared fixtures: the project's real conf/ composed into a params file in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.config import compose
from tests.servers import ray_cluster, s3_server  # noqa: F401 (one of each per session)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONLAB_PROGRESS", "0")


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """params.yaml composed from the repository's conf/, in a fresh project folder."""
    path = tmp_path / "project" / "params.yaml"
    path.parent.mkdir()
    path.write_text(compose(REPO / "conf"), encoding="utf-8")
    return path
