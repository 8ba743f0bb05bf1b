"""The command line's messages: a mistyped key gets the key it likely means (never Hydra's advice
to append it), keys as params.yaml spells them, an --out among the inputs refused before
anything is read, and image-file errors in the words of files, not of uploads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data.config import compose
from serving.cli.main import main
from serving.cli.train import train_overrides
from serving.runtime.errors import IncompleteImageError
from serving.runtime.imagefile import read_image
from serving.runtime.service.config import ServiceConfig
from serving.runtime.service.limits import check_header
from serving.runtime.service.protocol import HttpError
from tests.conftest import REPO
from tests.images import jpeg_bytes, texture, write


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def conf_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with the repository's conf/ and the params.yaml composed from it; the
    tests only read it."""
    root = tmp_path_factory.mktemp("conf-project")
    shutil.copytree(REPO / "conf", root / "conf")
    (root / "params.yaml").write_text(compose(root / "conf"), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("override", "said"),
    [
        (
            "evaluate.target_recal=0.5",
            "unknown key 'evaluate.target_recal'; did you mean 'evaluate.target_recall'?",
        ),
        ("validation.tolerance=0.1", "key 'validation'; did you mean 'validate.tolerance'?"),
        ("model=nonexistent", "Did you mean to override one of model@models."),
        ("model@models.new=maskrcnn_r50_fpn", "Could not override 'model@models.new'"),
    ],
)
def test_config_suggests_the_key_meant_and_never_hydras_append_advice(
    conf_project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    override: str,
    said: str,
) -> None:
    monkeypatch.chdir(conf_project)
    params = conf_project / "params.yaml"
    before = params.read_text()
    code, out, err = run(capsys, "config", override)
    assert code == 2 and not out
    assert said in err
    assert "+" not in err and "append" not in err and "Traceback" not in err
    assert params.read_text() == before  # nothing written


@pytest.mark.parametrize(
    ("override", "said"),
    [
        (
            "evaluate.target_recal=0.5",
            "evaluate.target_recal = 0.5: unknown key; did you mean 'evaluate.target_recall'? "
            "The allowed keys here: target_recall, ",
        ),
        ("evaluat.coverage=0.5", "did you mean 'evaluate.coverage'?"),
        ("validation.tolerance=0.1", "did you mean 'validate.tolerance'?"),
        ("collect.synthetic.cont=5", "did you mean 'collect.synthetic.count'?"),
        ("bogus=1", "bogus = 1: unknown key; allowed keys here: seed, paths, "),
    ],
)
def test_a_stage_suggests_the_key_meant(
    conf_project: Path, capsys: pytest.CaptureFixture[str], override: str, said: str
) -> None:
    params = conf_project / "params.yaml"
    code, out, err = run(capsys, "--params", str(params), "prepare", override)
    assert code == 2 and not out
    assert said in err and "+" not in err
    assert sorted(p.name for p in conf_project.iterdir()) == ["conf", "params.yaml"]


def test_every_key_is_named_as_params_yaml_spells_it(
    conf_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = conf_project / "params.yaml"
    # The section is `validate` in params.yaml (the schema's attribute is `validation`).
    for override in ("validate.tolerance=2", "~validate", "validate.bogus=1"):
        code, _, err = run(capsys, "--params", str(params_file), "prepare", override)
        assert code == 2 and "validate" in err, override
        assert "validation" not in err.replace("invalid configuration", ""), override
    # `anonlab train`'s short keys (steps=2: train.steps=2) leave the root sections alone.
    assert train_overrides(["validate={tolerance:0.1}", "steps=2"]) == [
        "validate={tolerance:0.1}",
        "train.steps=2",
    ]


def _images(root: Path) -> dict[Path, bytes]:
    write(root / "in" / "day1" / "a.jpg", jpeg_bytes(texture(64, 48, seed=1)))
    write(root / "in" / "b.jpg", jpeg_bytes(texture(64, 48, seed=2)))
    return {p: p.read_bytes() for p in (root / "in").rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("inputs", "out", "said"),
    [
        (["in"], "in/anonymized", "--out in/anonymized is inside the input folder in: "),
        (["in"], "in", "--out in is the input folder in: the outputs would replace the inputs"),
        (
            ["in/day1", "in/b.jpg"],
            "in/day1/x",
            "--out in/day1/x is inside the input folder in/day1",
        ),
        (["in/**/*.jpg"], "in/x", "--out in/x is inside the input folder in (of in/**/*.jpg)"),
        (["in/day1"], "in", "the input folder in/day1 is inside --out in: "),
    ],
)
def test_blur_refuses_an_out_among_its_inputs_before_reading_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    inputs: list[str],
    out: str,
    said: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _images(tmp_path)
    # No artifact is needed: the refusal comes before the models are looked at.
    code, stdout, err = run(capsys, "blur", *inputs, "--out", out, "--model", "no-such-artifact")
    assert code == 2 and not stdout
    assert said in err and "nothing was read or written" in err
    assert {p: p.read_bytes() for p in (tmp_path / "in").rglob("*") if p.is_file()} == before
    assert not any(p.name.startswith(".anonlab") for p in tmp_path.rglob("*"))


def test_blur_takes_an_out_beside_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path)
    for inputs, out in ((["in"], "out"), (["in/b.jpg"], "in/anonymized")):
        code, _, err = run(capsys, "blur", *inputs, "--out", out, "--model", "no-such-artifact")
        # Past the check on --out: the next thing refused is the missing artifact.
        assert code == 2 and "--out" not in err and "no-such-artifact" in err


def test_a_truncated_image_file_is_said_in_the_words_of_files(
    shared_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = jpeg_bytes(texture(96, 64, seed=3))
    cut = write(tmp_path / "in" / "cut.jpg", data[: len(data) // 2])
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--model", str(shared_artifact), "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"failed: {cut}: decode: the JPEG is truncated" in err
    assert "copy the whole file again from its source" in err and "upload" not in err
    assert not (out / "cut.jpg").exists() and cut.read_bytes() == data[: len(data) // 2]


def test_the_service_keeps_the_words_of_uploads() -> None:
    data = jpeg_bytes(texture(96, 64, seed=3))
    with pytest.raises(IncompleteImageError) as cut:
        read_image(data[: len(data) // 2])
    assert "copy the whole file again" in str(cut.value)
    assert cut.value.for_upload().endswith("upload the whole file again")
    with pytest.raises(HttpError) as refused:
        check_header(data[:40], ServiceConfig())  # ends inside its header
    assert refused.value.status == 422
    assert refused.value.message.endswith("; upload the whole file again")
    assert "copy" not in refused.value.message
