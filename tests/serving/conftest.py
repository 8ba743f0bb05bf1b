"""Fixtures shared by the runtime's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.artifacts import tiny_artifact


@pytest.fixture(scope="session")
def shared_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny exported artifact, made once per test session; tests only read it (copy it
    to change it)."""
    return tiny_artifact(tmp_path_factory.mktemp("shared-artifact"))
