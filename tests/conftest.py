"""Shared fixtures: the project's real conf/ composed into a params file in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.config import compose

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
