"""`dvc plots show` in a real DVC repository with the project's dvc.yaml and templates: every
declared plot has its axes and one series per class, the training curves name their model, and
the page from `evaluation.plots_page` carries Vega itself instead of loading it from a CDN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from data.atomic import write_json
from data.errors import AnonlabError
from data.prepare import sizes_rows
from data.stage_paths import StagePaths
from evaluation.plot_rows import write_plots
from evaluation.plots_page import main, page, write_page
from evaluation.score import score
from tests.commands import sh
from tests.conftest import REPO
from tests.evaluation.test_score import FAST, random_case

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
MODELS = list(PARAMS["train"]["models"])
SETS = ("val", "holdout")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's pipeline and every plot file it declares."""
    work = tmp_path_factory.mktemp("plots") / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    sh(work, "git", "init", "-q")
    sh(work, "dvc", "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", work / ".dvc" / "plots")
    paths = StagePaths(work / PARAMS["paths"]["artifacts"])
    counts = {"face": {"tiny": 3, "large": 1}, "person": {"tiny": 2, "large": 4}}
    stats = {split: {"images": 2, "objects": counts} for split in ("train", "val", "ref-holdout")}
    write_json(paths.prepared.sizes, sizes_rows(stats))
    result = score(*random_case(5, n_images=4), FAST)
    for model in MODELS:
        folder = paths.model(model)
        write_json(folder.loss_curve, [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)])
        write_json(folder.val_curve, [{"step": s, "score": -0.5 + s / 10} for s in (0, 2)])
        for set_name in SETS:
            write_plots(paths.eval, model, set_name, result)
    return work


def declared(repo: Path) -> dict[str, dict[str, Any]]:
    """Every plot file dvc.yaml declares, with its properties; `${item}` is each model."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out: dict[str, dict[str, Any]] = {}
    for stage in stages.values():
        items = MODELS if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for item in items:
            for entry in body.get("plots", []):
                (path, props), = entry.items()  # fmt: skip
                path = path.replace("${item}", item or "")
                title = props.get("title")
                props = {**props, "title": title.replace("${item}", item) if item else title}
                files = sorted((repo / path).rglob("*.json")) if (repo / path).is_dir() else []
                for f in files or [repo / path]:
                    out[f.relative_to(repo).as_posix()] = props
    return out


def axis_fields(spec: Any, axis: str) -> set[str]:
    """The fields a Vega-Lite spec puts on `axis` ("x" or "y"), in any of its layers."""
    if isinstance(spec, list):
        return set().union(*(axis_fields(s, axis) for s in spec))
    if not isinstance(spec, dict):
        return set()
    found = {spec[axis]["field"]} if isinstance(spec.get(axis), dict) else set()
    return found.union(*(axis_fields(v, axis) for k, v in spec.items() if k != axis))


def test_every_declared_plot_has_its_axes_and_one_series_per_class(repo: Path) -> None:
    plots = declared(repo)
    assert len(plots) == 1 + len(MODELS) * (2 + 2 * len(SETS))  # sizes, curves, pr, recall
    shown = json.loads(sh(repo, "dvc", "plots", "show", "--json"))["data"]
    assert set(shown) == set(plots)
    titles = []
    for path, props in plots.items():
        spec = shown[path][0]["content"]
        assert axis_fields(spec, "x") == {props["x"]} and axis_fields(spec, "y") == {props["y"]}
        encoding = spec["encoding"]
        rows = spec["data"]["values"]
        assert rows and all(props["x"] in r and props["y"] in r for r in rows), path
        if "template" in props:  # the project's templates: one colour per class
            assert encoding["color"]["field"] == "class"
            assert len({r["class"] for r in rows}) >= 2, path
            assert json.dumps(props["x_label"]) in json.dumps(spec)  # the axis says what it is
        titles.append(spec["title"]["text"])
    # every plot says what it is of: the training curves their model, evaluate's their file
    assert len(set(titles)) == len(titles)
    for model in MODELS:
        assert sum(model in t for t in titles) == 2 + 2 * len(SETS)


def test_the_plots_page_draws_with_vega_inlined_and_nothing_from_a_network(repo: Path) -> None:
    template = write_page(repo / ".dvc" / "tmp" / "plots.html")
    sh(repo, "dvc", "plots", "show", "--html-template", str(template), "-o", "out")
    html = (repo / "out" / "index.html").read_text(encoding="utf-8")
    assert "window.vegaEmbed=" in html and "window.vegaLite=" in html
    assert "<script src" not in html and "cdn.jsdelivr" not in html
    assert html.count("vegaEmbed('#") == len(declared(repo))


@pytest.mark.parametrize("bad", ["</script>", "{plot_divs}"])
def test_a_bundle_that_cannot_be_inlined_is_refused(bad: str) -> None:
    with pytest.raises(AnonlabError, match="cannot be inlined"):
        page(f"window.vegaEmbed = 1; // {bad}")


def test_outside_a_dvc_repository_the_page_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "run this in the repository root" in caplog.text
    assert not any(tmp_path.iterdir())
