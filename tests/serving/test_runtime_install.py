"""The blurring runtime installs alone: the wheel without extras imports every runtime module
in a clean environment that holds none of the platform's packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Modules that need the `torch` extra (the runtime's PyTorch backend); everything else in
# serving/runtime must import without it.
TORCH_ONLY = {"serving.runtime.architecture"}
# Top-level packages of the platform and the training stack that the runtime must not pull in.
ABSENT = (
    "mlflow",
    "dvc",
    "label_studio",
    "label_studio_sdk",
    "torch",
    "torchvision",
    "hydra",
    "pycocotools",
    "albumentations",
)
# The platform's own packages ship in the same wheel, but importing the runtime loads none.
PLATFORM = ("data", "annotation", "training", "evaluation")

PROBE = """
import importlib, importlib.util, json, sys
modules, absent, platform = (json.loads(a) for a in sys.argv[1:4])
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{type(e).__name__}: {e}"
present = [name for name in absent if importlib.util.find_spec(name) is not None]
def of_platform(name):
    top, *rest = name.split(".")
    return top in platform or (top == "serving" and rest[:1] not in ([], ["runtime"]))
loaded = sorted(m for m in sys.modules if of_platform(m))
print(json.dumps({"failed": failed, "present": present, "loaded": loaded}))
"""


def runtime_modules() -> list[str]:
    """Every module of serving/runtime, by dotted name, from the source tree."""
    names = []
    for path in sorted((REPO / "serving" / "runtime").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def find_uv() -> str | None:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), REPO / ".tools/venv/bin/uv"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def uv(*args: str, env: dict[str, str]) -> None:
    """Run uv offline from its cache first, online when the cache lacks something."""
    for mode in (["--offline"], []):
        done = subprocess.run([*args, *mode], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
    raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def test_the_runtime_installs_and_imports_without_the_platform(tmp_path: Path) -> None:
    uv_bin = find_uv()
    if uv_bin is None:
        pytest.skip("uv is not installed (make setup installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    python = venv / "bin" / "python"

    uv(uv_bin, "build", "--wheel", "--out-dir", str(dist), str(REPO), env=env)
    (wheel,) = dist.glob("anonlab-*.whl")
    uv(uv_bin, "venv", "--python", sys.executable, str(venv), env=env)
    # The base dependencies at the lock's versions (no dev group, no extras), then the wheel,
    # whose own requirements `pip check` then finds satisfied by exactly that set.
    sync_env = {**env, "UV_PROJECT_ENVIRONMENT": str(venv)}
    uv(uv_bin, "sync", "--project", str(REPO), "--frozen", "--no-dev", "--no-install-project",
       env=sync_env)  # fmt: skip
    uv(uv_bin, "pip", "install", "--python", str(python), "--no-deps", str(wheel), env=env)
    uv(uv_bin, "pip", "check", "--python", str(python), env=env)

    modules = [m for m in runtime_modules() if m not in TORCH_ONLY]
    assert "serving.runtime.pipeline" in modules and set(runtime_modules()) >= TORCH_ONLY
    # Run outside the repository so that only the installed wheel can be imported.
    done = subprocess.run(
        [str(python), "-c", PROBE, json.dumps(modules), json.dumps(ABSENT), json.dumps(PLATFORM)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["failed"] == {}, f"runtime modules that do not import alone: {result['failed']}"
    assert result["present"] == [], f"installed with the runtime alone: {result['present']}"
    assert result["loaded"] == [], f"platform modules the runtime imports: {result['loaded']}"
