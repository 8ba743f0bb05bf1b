"""The command line and the configuration: params.yaml is fresh, bad config is a clear error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.config import compose
from evaluation.validate import release_gate
from serving.cli.main import COMMANDS, NO_PARAMS_COMMANDS, main
from serving.params import Params, load_project
from serving.runtime.release import release_problems
from tests.conftest import REPO


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_committed_params_yaml_is_a_fresh_composition_of_conf() -> None:
    # As committed: `make demo` composes the demo's profile into the working copy.
    shown = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    committed = shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text("utf-8")
    assert committed == compose(REPO / "conf"), (
        "params.yaml is stale: run `anonlab config` (make config) and commit it"
    )


def _composed(tmp_path: Path, *overrides: str) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(compose(REPO / "conf", list(overrides)), encoding="utf-8")
    return load_project(path).params


def test_the_committed_composition_is_the_release_gate(tmp_path: Path) -> None:
    params = _composed(tmp_path)
    rule = release_gate(
        params.evaluate, params.validation, params.taxonomy.classes, params.taxonomy.identifiable
    )
    assert release_problems(rule) == []
    assert rule.targets == dict.fromkeys(params.taxonomy.classes, 0.95)
    assert rule.estimate == "lower" and set(rule.metrics) == {"iou", "coverage"}
    # The demo's profile is not, and says why.
    demo = _composed(tmp_path, "evaluate=demo", "validate=demo")
    problems = release_problems(
        release_gate(demo.evaluate, demo.validation, demo.taxonomy.classes, {"face": 12})
    )
    assert any("target recall face 0.25" in p for p in problems), problems
    assert any("not by iou" in p for p in problems), problems
    assert any("tiny, small, medium and large not judged" in p for p in problems), problems
    assert any("point estimate" in p for p in problems), problems
    # Faces counted from 12 px only: a user who raises the minimum sees it.
    assert "objects counted as identifiable only face from 12 px (release: from 6 px)" in problems


def test_config_check_reports_a_stale_params_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "config")[0] == 0
    assert run(capsys, "config", "--check")[0] == 0
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("count: 48", "count: 47"))
    code, _, err = run(capsys, "config", "--check")
    assert code == 1 and "stale" in err
    # Group overrides compose like `dvc exp run -S`.
    assert run(capsys, "config", "collect.synthetic.count=50")[0] == 0
    assert "count: 50" in params.read_text()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "collect.synthetic.cuont=5",
            ["collect.synthetic.cuont = 5", "unknown key", "allowed keys here:", "count"],
        ),
        ("collect.synthetic.count=many", ["collect.synthetic.count = 'many'", "integer"]),
        ("review.dark_threshold=1.5", ["review.dark_threshold = 1.5", "less than or equal to 1"]),
        ("collect.workers=0", ["collect.workers = 0", "greater than or equal to 1"]),
        ("collect.sources=[]", ["collect.sources = []", "at least 1 item"]),
        ("collect.sources=[{url:/data}]", ["collect.sources[0].url", "unknown key", "uri"]),
        ("colect.workers=2", ["colect = {'workers': 2}", "unknown key", "collect"]),
        ("collect.synthetic.count", ["cannot parse override 'collect.synthetic.count'"]),
        ("augment.transforms=[{p:0.5}]", ["augment.transforms", "needs a `name`"]),
        (
            "prepare.tiling.overlap=600",
            ["prepare.tiling", "overlap (600) must be smaller than size (512)"],
        ),
        (
            "taxonomy.identifiable.dog=3",
            ["taxonomy.identifiable names ['dog']", "taxonomy.classes"],
        ),
        ("taxonomy.identifiable.face=-1", ["taxonomy.identifiable.face = -1", "greater than or"]),
        ("validate.estimate=mean", ["validate.estimate = 'mean'", "'lower' or 'point'"]),
        ("validate.buckets=[huge]", ["validate.buckets[0] = 'huge'", "'tiny'"]),
    ],
)
def test_bad_config_names_key_value_and_what_is_allowed(
    params_file: Path, capsys: pytest.CaptureFixture[str], override: str, expected: list[str]
) -> None:
    code, _, err = run(capsys, "--params", str(params_file), "collect", override)
    assert code == 2
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    # No stage starts work on a bad config.
    assert not (params_file.parent / "artifacts").exists()


def test_bad_conf_tree_does_not_overwrite_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "config")[0] == 0
    before = (tmp_path / "params.yaml").read_text()
    review = tmp_path / "conf" / "review" / "default.yaml"
    review.write_text(review.read_text().replace("blur_threshold: 40.0", "blur_threshold: -1"))
    code, _, err = run(capsys, "config")
    assert code == 2 and "review.blur_threshold = -1" in err
    assert (tmp_path / "params.yaml").read_text() == before


def test_missing_params_file_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--params", str(tmp_path / "params.yaml"), "review")
    assert code == 2 and "anonlab config" in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"anonlab {command}" in out
    # blur and serve read an artifact folder, score two COCO files: no overrides there.
    assert ("[key=value ...]" in out) == (command not in NO_PARAMS_COMMANDS)


# What each command needs besides overrides to get as far as reading them.
REQUIRED = {
    "blur": ["--model", "artifacts/serving", "--out", "blurred", "in.jpg"],
    "serve": ["--model", "artifacts/serving"],
    "score": ["--gt", "gt.json", "--pred", "pred.json"],
    "erase": ["--session", "drive-1", "--reason", "ticket 1"],
}


@pytest.fixture(scope="module")
def params_text() -> str:
    return compose(REPO / "conf")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_override(
    command: str,
    params_text: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tmp_path
    params_file = project / "params.yaml"
    params_file.write_text(params_text)
    monkeypatch.chdir(project)
    if command == "config":
        shutil.copytree(REPO / "conf", project / "conf")
    before = params_file.read_text()
    argv = [*command.split(), *REQUIRED.get(command, []), "bogus.key=1"]
    code, out, err = run(capsys, "--params", str(params_file), *argv)
    assert code == 2 and not out and "Traceback" not in err
    if command in NO_PARAMS_COMMANDS:
        assert f"error: {command} reads no params.yaml and takes no key=value overrides: " in err
        assert "bogus.key=1" in err and f"anonlab {command} --help" in err
    elif command == "config":
        assert "bogus.key = 1: unknown key 'bogus'; allowed keys at the top: " in err
        assert "collect, review" in err and "hydra" not in err
    else:
        assert "bogus = {'key': 1}: unknown key; allowed keys here: seed, paths, " in err
        assert ", validate, export" in err  # as params.yaml spells it
    # Nothing was started, nothing written.
    assert params_file.read_text() == before
    assert sorted(p.name for p in project.iterdir() if p.name != "conf") == ["params.yaml"]


def test_train_takes_its_own_keys_without_the_train_prefix() -> None:
    from serving.cli.train import train_overrides as _train_overrides

    given = [
        "max_steps=5",
        "optimizer.lr=0.02",
        "+schedule.milestones=[0.5]",
        "models.m.min_size=64",
        "seed=3",
        "train.batch_size=4",
        "nonsense=1",
    ]
    assert _train_overrides(given) == [
        "train.max_steps=5",
        "train.optimizer.lr=0.02",
        "+train.schedule.milestones=[0.5]",
        "models.m.min_size=64",
        "seed=3",
        "train.batch_size=4",
        # unknown keys land in train, so the error lists the train keys that exist
        "train.nonsense=1",
    ]


def test_the_runtime_runs_blur_and_serve_without_the_platform() -> None:
    # The runtime ships alone: its commands, and their parser, load nothing of the platform.
    code = (
        "import sys\n"
        "from serving.runtime.__main__ import build_parser\n"
        "build_parser()\n"
        "platform = {'data', 'annotation', 'training', 'evaluation', 'torch', 'mlflow'}\n"
        "print([m for m in sys.modules if m.split('.')[0] in platform "
        "or m.startswith(('serving.cli', 'serving.params', 'serving.export'))])\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
    for command in ("blur", "serve"):
        shown = subprocess.run(
            [sys.executable, "-m", "serving.runtime", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0
        # The same description as `anonlab <command> --help` (wrapped to another width).
        assert "".join(COMMANDS[command].description.split()) in "".join(shown.stdout.split())


def test_erase_without_a_key_or_with_an_unknown_session_says_so_and_writes_nothing(
    params_text: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(params_text)
    manifest = tmp_path / "artifacts" / "raw" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANONLAB_AUDIT_KEY", raising=False)
    argv = ["--params", str(params_file), "erase", "--session", "drive-9", "--reason", "t-1"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out and "ANONLAB_AUDIT_KEY is not set" in err
    monkeypatch.setenv("ANONLAB_AUDIT_KEY", "k" * 40)
    code, out, err = run(capsys, *argv)
    assert code == 2 and "has session drive-9, and none was erased before" in err
    assert "Traceback" not in err
    assert manifest.read_text() == "" and not (tmp_path / "artifacts" / "audit").exists()
