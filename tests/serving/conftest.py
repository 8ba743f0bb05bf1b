"""Fixtures shared by the runtime's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.export import run_export
from tests.serving.artifacts import composite_setup, tiny_artifact


@pytest.fixture(scope="session")
def shared_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny exported artifact, made once per test session; tests only read it (copy it
    to change it)."""
    return tiny_artifact(tmp_path_factory.mktemp("shared-artifact"))


@pytest.fixture(scope="session")
def shared_composite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anonymizer of the tiny model and the tiny keypoint model, exported by `run_export`
    (the composite artifact's folder, beside its members' in artifacts/serving), made once per
    test session; tests only read it (copy it to change it)."""
    *_, composite = run_export(composite_setup(tmp_path_factory.mktemp("shared-composite")))
    return composite
