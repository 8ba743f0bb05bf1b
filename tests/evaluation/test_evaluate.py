"""evaluate and validate on the real pipeline's data with a tiny trained model, a real MLflow
(SQLite) registry, and the `anonlab` command line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import mlflow
import pytest
import torch
import yaml

from evaluation.config import EvaluateConfig, ValidateConfig
from evaluation.registry import Registry
from evaluation.training_validator import release_validator
from evaluation.validate import gate
from serving.cli import main as cli_main
from serving.params import Project, load_project
from serving.runtime.checksum import file_sha256
from tests.conftest import REPO
from tests.prepared import prepared_project
from tests.training.tiny_models import register_model
from tests.training.tiny_runs import DATA, MODEL, TINY
from training.config import ModelConfig
from training.models import build_model, model_files_config, save_weights

EVAL = [
    "evaluate.n_boot=50",
    "evaluate.tiling.tile=256",
    "evaluate.tiling.overlap=32",
    "evaluate.gallery.max_per_set=5",
    "train.max_steps=3",
    "train.val_every=0",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A project with prepared synthetic data and the tiny model trained (validated as
    `anonlab train` validates it) and registered."""
    from training.loop import TrainSetup, run_train

    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("DVC_ROOT", raising=False)
        mp.chdir(root)
        project = prepared_project(root, [*DATA, *TINY, *EVAL])
        p = project.params
        validator = release_validator(p, MODEL, artifacts=project.artifacts)
        run_train(TrainSetup.of(p, MODEL, artifacts=project.artifacts, root=root), validator)
        yield project


def _cli(project: Project, *argv: str) -> int:
    return cli_main(["--params", str(project.root / "params.yaml"), *argv])


def _client(project: Project) -> mlflow.MlflowClient:
    uri = f"sqlite:///{project.root / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_evaluate_writes_metrics_report_and_mlflow_consistent_with_score(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(project, "evaluate") == 0
    out = project.artifacts / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics[MODEL]
    assert entry["version"] == "1"  # the registered version of these weights
    # The weights scored, by content: what validate and export check the weights against.
    sha = file_sha256(project.artifacts / "models" / MODEL / "weights.safetensors")
    assert entry["weights_sha256"] == sha
    assert set(entry["sets"]) == {"val", "holdout"}
    classes = project.params.models[MODEL].classes
    assert set(entry["thresholds"]) == set(classes)
    for t in entry["thresholds"].values():
        assert project.params.evaluate.min_threshold <= t["threshold"] <= 1
    holdout = entry["sets"]["holdout"]["recall"]
    assert set(holdout) == set(classes)
    assert set(holdout["face"]) == {"tiny", "small", "medium", "large", "all", "below_identifiable"}
    assert holdout["face"]["all"]["n"] > 0

    # The predictions evaluate wrote, scored by `anonlab score` at the same thresholds, give
    # the same numbers: the report is the scorer's, not a second computation.
    thresholds = ",".join(f"{c}={t['threshold']!r}" for c, t in entry["thresholds"].items())
    gt = project.artifacts / "prepared" / "refs" / "holdout.json"
    pred = out / "predictions" / MODEL / "holdout.json"
    scored = out.parent / "scored.json"
    heights = ",".join(f"{c}={h}" for c, h in project.params.taxonomy.identifiable.items())
    argv = ["score", "--gt", str(gt), "--pred", str(pred), "--thresholds", thresholds]
    argv += ["--identifiable", heights]
    assert cli_main([*argv, "--n-boot", "50", "--out", str(scored)]) == 0
    again = json.loads(scored.read_text())["recall"]
    for name in classes:
        for key in ("n", "iou", "coverage"):
            for bucket in ("all", "below_identifiable"):
                assert again[name][bucket][key] == holdout[name][bucket][key], (name, key)
    assert "face" in capsys.readouterr().out

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2  # PR curves, recall by size
    missed = sum(
        not cell["coverage"] or cell["coverage"] < 1
        for cell in (holdout[c]["all"] for c in classes)
    )
    if missed:
        assert "data:image/jpeg;base64," in report  # the gallery of missed objects
        # Counted against every object of the set, each crop named by its file and session.
        n = sum(holdout[c][b]["n"] for c in classes for b in ("all", "below_identifiable"))
        assert f" of {n} objects missed (" in report
        assert ".jpg, session synthetic-drive-" in report
    assert "No champion in the registry yet." in report
    assert (out / "plots" / "pr" / MODEL / "holdout.json").is_file()
    # DVC's metrics: the headline of each model and the anonymizer on the reference sets.
    headline = json.loads((out / "headline.json").read_text())
    assert set(headline) == {MODEL, "anonymizer"} and set(headline[MODEL]) == {"holdout"}
    assert headline[MODEL]["holdout"]["coverage"]["face"] == holdout["face"]["all"]["coverage"]

    client = _client(project)
    experiment = client.get_experiment_by_name("anonlab/evaluate")
    runs = {_subject(r): r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {MODEL, "anonymizer"}
    run = runs[MODEL]
    assert run.data.tags["anonlab.model"] == MODEL
    assert run.data.tags["anonlab.weights_sha256"] == sha
    _check_links(client, run, entry)
    key = "recall/holdout/face/all"
    if holdout["face"]["all"]["iou"] is not None:
        assert run.data.metrics[key] == pytest.approx(holdout["face"]["all"]["iou"])
    assert f"threshold/{classes[0]}" in run.data.metrics

    # The one model is the anonymizer (no keypoint model: no heads), scored on what it hides.
    anonymizer = metrics["anonymizer"]
    _check_anonymizer_entry(project, metrics, {MODEL})
    assert anonymizer["supplies"] == dict.fromkeys(classes, MODEL)
    assert anonymizer["heads"] == {} and "head" not in anonymizer["thresholds"]
    assert anonymizer["heads_only"] == {"holdout": 0}
    _hides_at_least_what_the_model_covers(anonymizer, entry, classes)
    assert report.index("id='anonymizer'") < report.index(f"id='{MODEL}'")
    assert "the release gate judges" in report
    tracked = runs["anonymizer"]
    assert tracked.data.tags[f"anonlab.member.{MODEL}.weights_sha256"] == sha
    assert tracked.data.tags[f"anonlab.member.{MODEL}.version"] == "1"
    assert tracked.info.run_name.startswith("anonymizer · ")
    if anonymizer["sets"]["holdout"]["recall"]["face"]["all"]["coverage"] is not None:
        for name in ("coverage/holdout/face/all", "holdout/face/coverage"):  # headline: both
            assert tracked.data.metrics[name] == pytest.approx(
                anonymizer["sets"]["holdout"]["recall"]["face"]["all"]["coverage"]
            )
    assert tracked.data.metrics["heads_only/holdout"] == 0
    _check_peer(metrics, report, runs, project)


def _subject(run: mlflow.entities.Run) -> str:
    """The model an evaluate run scored, or `anonymizer`."""
    return run.data.tags.get("anonlab.model") or run.data.tags["anonlab.anonymizer"]


def _check_links(client: mlflow.MlflowClient, run: mlflow.entities.Run, entry: dict) -> None:
    """The run is named after the model, the commit and the stage; it names and links the
    version it scored and that version's training run, and logs the headline recall under
    short names; the version links the run back and carries its headline recall."""
    assert run.info.run_name.startswith(f"{MODEL} · ") and run.info.run_name.endswith(" · evaluate")
    version = client.get_model_version(MODEL, entry["version"])
    tags, note = run.data.tags, run.data.tags["mlflow.note.content"]
    assert tags["anonlab.registered_model"] == MODEL and tags["anonlab.model_version"] == "1"
    assert tags["anonlab.train_run_id"] == version.run_id
    train = client.get_run(version.run_id)
    assert f"[version 1](#/models/{MODEL}/versions/1?" in note
    assert f"[{train.info.run_name}](#/experiments/{train.info.experiment_id}/runs/" in note
    holdout = entry["sets"]["holdout"]["recall"]
    for name, cells in holdout.items():
        for metric in ("iou", "coverage"):
            if cells["all"][metric] is not None:
                logged = run.data.metrics[f"holdout/{name}/{metric}"]
                assert logged == pytest.approx(cells["all"][metric])
    experiment, run_id = run.info.experiment_id, run.info.run_id
    assert version.tags["anonlab.evaluate_run"] == f"{experiment}/{run_id}"
    assert f"(#/experiments/{experiment}/runs/{run_id}?" in version.description
    assert "| holdout | face |" in version.description


def _check_peer(metrics: dict, report: str, runs: dict, project: Project) -> None:
    """CenterFace (evaluate.peers' default) scored beside the model on every set, for faces
    only, at a threshold chosen on val; in metrics.json, the report's tables and MLflow."""
    peer = metrics["peer:centerface"]
    assert set(peer) == {"peer", "licence", "classes", "thresholds", "sets"}
    assert peer["peer"] == "centerface" and peer["licence"].startswith("MIT")
    assert peer["classes"] == ["face"]  # not scored on persons, plates or vehicles
    assert set(peer["sets"]) == {"val", "holdout"}
    face = peer["thresholds"]["face"]
    assert project.params.evaluate.min_threshold <= face["threshold"] <= 1
    for s in peer["sets"].values():
        assert set(s) == {"recall", "coco", "false_positives_per_image"}
        assert set(s["recall"]) == {"face"}
    holdout = peer["sets"]["holdout"]["recall"]["face"]
    ours = metrics[MODEL]["sets"]["holdout"]["recall"]["face"]
    assert holdout["all"]["n"] == ours["all"]["n"] > 0  # the same faces
    assert holdout["all"]["iou"] is not None and holdout["all"]["coverage"] is not None

    assert "id='peers'" in report and "peer centerface" in report
    model_section = report[report.index(f"id='{MODEL}'") :]
    # CenterFace gives boxes: its recall is box IoU, beside the model's mask IoU.
    assert "<th>mask IoU</th>" in model_section
    peer_label = "<tr class='peer'><td>face <span class='note'>peer centerface, box IoU</span>"
    assert peer_label in model_section
    assert "<td>peer centerface</td>" in report[: report.index("id='peers'")]  # anonymizer's

    for run in (runs[MODEL], runs["anonymizer"]):
        logged = run.data.metrics
        for metric, key in (("iou", "recall"), ("coverage", "coverage")):
            name = f"peer/centerface/{key}/holdout/face/all"
            assert logged[name] == pytest.approx(holdout["all"][metric])
        assert logged["peer/centerface/threshold/face"] == pytest.approx(face["threshold"])
        assert not any(k.startswith("peer/centerface/recall/holdout/person") for k in logged)


def test_evaluate_refuses_an_unknown_peer_and_keeps_its_outputs(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = project.artifacts / "eval" / "metrics.json"
    before = metrics.read_bytes() if metrics.is_file() else None
    assert _cli(project, "evaluate", "evaluate.peers=[centerface,retinaface]") == 2
    err = capsys.readouterr().err
    assert "evaluate.peers = ['centerface', 'retinaface']: 'retinaface': no such " in err
    assert "use some of centerface, haar, or [] for none" in err
    assert (metrics.read_bytes() if metrics.is_file() else None) == before


KEYPOINT = "keypointrcnn_mobilenet_v3_fpn"


def _random_keypoint_model(project: Project) -> None:
    """A tiny Keypoint R-CNN with random weights, saved as training saves a model (nothing is
    trained: its persons and keypoints are noise, which is enough to make heads)."""
    config = ModelConfig(
        kind="keypointrcnn",
        backbone="mobilenet_v3_small",
        trainable_layers=0,
        fpn_channels=16,
        classes=["person"],
        min_size=64,
        max_size=96,
        proposals_per_image=40,
        rois_per_image=16,
        detections_per_image=8,
    )
    names = list(project.params.taxonomy.keypoints)
    torch.manual_seed(0)
    model = build_model(config, keypoint_names=names)
    folder = project.artifacts / "models" / KEYPOINT
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "weights.safetensors")
    files_config = model_files_config(config, keypoint_names=names)
    (folder / "config.yaml").write_text(yaml.safe_dump(files_config), encoding="utf-8")


def _check_anonymizer_entry(project: Project, metrics: dict, members: set[str]) -> None:
    """metrics.json["anonymizer"] has the contract's keys, on every set."""
    anonymizer = metrics["anonymizer"]
    keys = {"members", "supplies", "heads", "styles", "thresholds", "sets", "heads_only"}
    assert set(anonymizer) == keys
    assert set(anonymizer["members"]) == members
    for name, member in anonymizer["members"].items():
        weights = project.artifacts / "models" / name / "weights.safetensors"
        assert member["weights_sha256"] == file_sha256(weights) == metrics[name]["weights_sha256"]
        assert member["version"] == metrics[name]["version"]
    assert set(anonymizer["sets"]) == {"val", "holdout"}
    taxonomy = project.params.taxonomy.classes
    for s in anonymizer["sets"].values():
        assert set(s) == {"recall", "coco", "false_positives_per_image"}
        assert set(s["recall"]) == set(taxonomy)
    assert set(anonymizer["heads_only"]) == {"holdout"}
    styles = project.params.export.styles
    for cls, model in anonymizer["supplies"].items():
        assert anonymizer["styles"][cls] == dict(styles["face" if cls == "head" else cls])
        if cls != "head":
            own = metrics[model]["thresholds"][cls]
            assert anonymizer["thresholds"][cls] == {**own, "model": model}


def _hides_at_least_what_the_model_covers(anonymizer: dict, model: dict, classes: list) -> None:
    """The anonymizer takes every class from `model` at its thresholds: the same detections, so
    the same IoU recall; and it hides each detection's region grown by its style's margin (and
    heads), so it covers at least what the model's detections cover."""
    for set_name, s in anonymizer["sets"].items():
        for name in classes:
            for bucket, cell in s["recall"][name].items():
                own = model["sets"][set_name]["recall"][name][bucket]
                assert (cell["n"], cell["iou"]) == (own["n"], own["iou"]), (set_name, name)
                if cell["n"]:
                    assert cell["coverage"] >= own["coverage"], (set_name, name, bucket)


def test_evaluate_scores_the_anonymizer_with_the_heads_of_a_keypoint_model(
    project: Project,
) -> None:
    """With a keypoint model among train.models, its persons' heads join the anonymizer: the
    head threshold is chosen on val by the face coverage it gives, and what the heads alone
    hide is counted. The eval folder is put back afterwards (later tests read it)."""
    out = project.artifacts / "eval"
    saved = project.root / "eval-saved"
    if out.exists():
        shutil.copytree(out, saved)
    _random_keypoint_model(project)
    try:
        assert _cli(project, "evaluate", f"train.models=[{MODEL},{KEYPOINT}]") == 0
        metrics = json.loads((out / "metrics.json").read_text())
        anonymizer = metrics["anonymizer"]
        _check_anonymizer_entry(project, metrics, {MODEL, KEYPOINT})
        classes = project.params.models[MODEL].classes
        assert anonymizer["supplies"] == {**dict.fromkeys(classes, MODEL), "head": KEYPOINT}
        assert anonymizer["heads"] == project.params.anonymizer.heads.spec().to_dict()
        # The entry of the keypoint model itself still scores its persons.
        assert metrics[KEYPOINT]["sets"]["holdout"]["recall"]["person"]["all"]["n"] > 0
        _hides_at_least_what_the_model_covers(anonymizer, metrics[MODEL], classes)

        head = anonymizer["thresholds"]["head"]
        evaluate = project.params.evaluate
        own = metrics[KEYPOINT]["thresholds"]["person"]["threshold"]
        assert head["model"] == KEYPOINT
        assert evaluate.min_threshold <= head["threshold"] <= own
        val_face = anonymizer["sets"]["val"]["recall"]["face"]["all"]
        if val_face["n"]:
            # The recall the rule chose by is the one the scorer measures on the hidden pixels.
            assert head["val_recall"] == val_face["coverage"]
            assert head["reached"] == (head["val_recall"] >= evaluate.target("face"))
        else:
            assert head["val_recall"] is None and head["threshold"] == own

        # Faces covered only thanks to heads: covered, and not by the model's own detections.
        face = anonymizer["sets"]["holdout"]["recall"]["face"]["all"]
        alone = metrics[MODEL]["sets"]["holdout"]["recall"]["face"]["all"]
        heads_only = anonymizer["heads_only"]["holdout"]
        if face["n"]:
            covered = round(face["coverage"] * face["n"])
            assert covered - heads_only >= round(alone["coverage"] * alone["n"])

        report = (out / "report.html").read_text()
        assert f"Faces only the heads hid on holdout: {heads_only}" in report
        client = _client(project)
        experiment = client.get_experiment_by_name("anonlab/evaluate")
        runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
        latest = next(r for r in runs if _subject(r) == "anonymizer")
        for name in (MODEL, KEYPOINT):
            sha = anonymizer["members"][name]["weights_sha256"]
            assert latest.data.tags[f"anonlab.member.{name}.weights_sha256"] == sha
        assert latest.data.metrics["heads_only/holdout"] == heads_only
        assert latest.data.metrics["threshold/head"] == pytest.approx(head["threshold"])
    finally:
        shutil.rmtree(project.artifacts / "models" / KEYPOINT)
        if saved.exists():
            shutil.rmtree(out)
            shutil.copytree(saved, out)
            shutil.rmtree(saved)


def test_training_keeps_best_by_the_numbers_evaluate_computes_on_val(project: Project) -> None:
    """One metric: the validation that made these weights `best` during training gives the
    operating thresholds and the val recall (IoU and coverage) that evaluate computes for them,
    and the worst gate cell's margin to its target is the score `best` maximised."""
    from training.models import load_model_files

    models = project.artifacts / "models" / MODEL
    metrics_path = project.artifacts / "eval" / "metrics.json"
    sha = file_sha256(models / "weights.safetensors")
    if (
        not metrics_path.is_file()
        or json.loads(metrics_path.read_text())[MODEL]["weights_sha256"] != sha
    ):
        assert _cli(project, "evaluate") == 0
    entry = json.loads(metrics_path.read_text())[MODEL]
    best = json.loads((models / "metrics.json").read_text())["best"]
    assert best["step"] == 3  # train.max_steps: validated at 0 (untrained, never best) and 3
    classes = project.params.models[MODEL].classes
    assert best["thresholds"] == entry["thresholds"]
    val = entry["sets"]["val"]["recall"]
    for name in classes:
        cell = val[name]["all"]
        assert best["recall"][name] == {"iou": cell["iou"], "coverage": cell["coverage"]}, name
    evaluate, gate = project.params.evaluate, project.params.validation
    worst, bucket, metric = best["worst_cell"].split("/")
    assert metric in gate.gate_metrics
    assert best["score"] == pytest.approx(val[worst][bucket][metric] - evaluate.target(worst))
    assert best["score"] == min(best["margins"].values())
    for cell, margin in best["margins"].items():
        name, bucket, metric = cell.split("/")
        assert bucket == "all" or val[name][bucket]["n"] >= gate.min_objects
        assert margin == pytest.approx(val[name][bucket][metric] - evaluate.target(name))

    # The validator leaves the model it is handed as it found it.
    model, _ = load_model_files(models / "config.yaml", models / "weights.safetensors")
    model.eval()
    model.roi_heads.score_thresh = 0.42
    again = release_validator(project.params, MODEL, artifacts=project.artifacts)(model, 3)
    assert again.record()["thresholds"] == entry["thresholds"]
    assert model.roi_heads.score_thresh == 0.42

    client = _client(project)
    experiment = client.get_experiment_by_name("anonlab/train")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])[0]
    for name in classes:
        assert f"val/threshold/{name}" in run.data.metrics
        if val[name]["all"]["n"]:
            assert f"val/coverage/{name}/all" in run.data.metrics
    assert run.data.metrics["val/score"] == pytest.approx(best["score"])


def test_validate_fails_the_gate_then_passes_sets_challenger_and_promotes(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (project.artifacts / "eval" / "metrics.json").is_file():
        assert _cli(project, "evaluate") == 0
    metrics_path = project.artifacts / "eval" / "metrics.json"
    saved = metrics_path.read_text()
    try:
        # A 3-step model cannot pass the release gate (the composed default: recall 0.95 by IoU
        # and by coverage in every size bucket): it fails, with every check on record.
        assert _cli(project, "validate") == 2
        err = capsys.readouterr().err
        assert "validation failed" in err and "recall below target" in err
        verdict = json.loads((project.artifacts / "validation" / "verdict.json").read_text())
        assert verdict["passed"] is False and verdict["challengers"] == {}
        assert any(name.endswith("target.iou") for name in verdict["failed"])
        registry = Registry(project.root)
        assert registry.by_alias(MODEL, "challenger") is None
        description = _client(project).get_model_version(MODEL, "1").description
        assert description.startswith("**Gate: failed**") and "target.iou`" in description

        # The same weights with recall at the target (as a good model's metrics would be).
        metrics_path.write_text(_reaching_targets(saved))
        assert _cli(project, "validate") == 0
        assert "version 1 is the challenger" in capsys.readouterr().out
        text = (project.artifacts / "validation" / "verdict.json").read_text()
        assert text.splitlines()[0].startswith('{"notice": "RELEASE GATE: recall of every class')
        verdict = json.loads(text)
        assert verdict["passed"] is True and verdict["challengers"] == {MODEL: "1"}
        # The peer (recall 0 in every cell) is a baseline, never judged or taken for a model.
        assert not any("peer" in c["name"] for c in verdict["checks"])
        assert verdict["release"] is True and verdict["gate"]["estimate"] == "lower"
        judged = next(c for c in verdict["checks"] if c["name"].endswith("target.iou"))
        face = judged["details"]["face/all"]
        assert face["estimate"] == face["interval"][0] and face["target"] == 0.95
        weights = project.artifacts / "models" / MODEL / "weights.safetensors"
        sha = file_sha256(weights)
        assert verdict["models"] == {MODEL: {"weights_sha256": sha, "version": "1"}}
        assert verdict["metrics_sha256"] == file_sha256(metrics_path)
        assert registry.by_alias(MODEL, "challenger").version == "1"
        assert registry.by_alias(MODEL, "champion") is None  # promotion is explicit
        description = _client(project).get_model_version(MODEL, "1").description
        assert description.startswith("**Gate: passed**") and "`challenger`" in description
        assert "| holdout | face |" in description and "NOT A RELEASE" not in description

        assert _cli(project, "validate", "promote", "--user", "ana") == 0
        champion = _client(project).get_model_version_by_alias(MODEL, "champion")
        assert str(champion.version) == "1" and champion.tags["anonlab.promoted_by"] == "ana"
        assert "anonlab.promoted_at" in champion.tags
    finally:
        metrics_path.write_text(saved)
        for alias in ("challenger", "champion"):
            if Registry(project.root).by_alias(MODEL, alias):
                _client(project).delete_registered_model_alias(MODEL, alias)


def _reaching_targets(metrics_json: str) -> str:
    """evaluate's metrics.json with every recall 1.0 (the model's and the anonymizer's): the
    gate passes on the numbers; and every recall of the peer 0.0, which would fail any gate
    that judged it."""
    metrics = json.loads(metrics_json)
    for s in metrics["peer:centerface"]["sets"].values():
        for buckets in s["recall"].values():
            for cell in buckets.values():
                cell["iou"] = cell["coverage"] = 0.0 if cell["n"] else None
                cell["iou_ci"] = cell["coverage_ci"] = [0.0, 0.0] if cell["n"] else None
    for s in [*metrics[MODEL]["sets"].values(), *metrics["anonymizer"]["sets"].values()]:
        for buckets in s["recall"].values():
            for cell in buckets.values():
                cell["iou"] = cell["coverage"] = 1.0 if cell["n"] else None
                cell["iou_ci"] = cell["coverage_ci"] = [1.0, 1.0] if cell["n"] else None
    return json.dumps(metrics)


def test_validate_and_export_hold_to_the_weights_evaluate_scored(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights changed after a passing validate are not exported; weights changed after
    evaluate, or a registered version tagged with other weights, fail validate."""
    if not (project.artifacts / "eval" / "metrics.json").is_file():
        assert _cli(project, "evaluate") == 0
    metrics_path = project.artifacts / "eval" / "metrics.json"
    verdict_path = project.artifacts / "validation" / "verdict.json"
    saved = metrics_path.read_text()
    weights = project.artifacts / "models" / MODEL / "weights.safetensors"
    original = weights.read_bytes()
    scored = file_sha256(weights)
    client = _client(project)
    try:
        metrics_path.write_text(_reaching_targets(saved))
        assert _cli(project, "validate") == 0
        capsys.readouterr()
        changed = bytearray(original)
        changed[-1] ^= 1  # a byte of the last tensor: still a loadable safetensors file
        weights.write_bytes(bytes(changed))
        now = file_sha256(weights)

        assert _cli(project, "export") == 2
        err = capsys.readouterr().err
        assert f"has sha256 {now}, but the weights validate passed have sha256 {scored}" in err
        assert "`anonlab evaluate` and `anonlab validate`" in err
        assert not (project.artifacts / "serving").exists()  # nothing written, not even staged
        assert not list(project.artifacts.glob(".serving*"))

        assert _cli(project, "validate") == 2
        err = capsys.readouterr().err
        assert f"has sha256 {now}, but evaluate scored weights with sha256 {scored}" in err
        verdict = json.loads(verdict_path.read_text())
        assert f"{MODEL}.weights" in verdict["failed"] and verdict["challengers"] == {}

        weights.write_bytes(original)
        client.set_model_version_tag(MODEL, "1", "anonlab.weights_sha256", "0" * 64)
        assert _cli(project, "validate") == 2
        err = capsys.readouterr().err
        assert f"version 1 is tagged anonlab.weights_sha256 {'0' * 64}" in err
        assert f"evaluate scored weights with sha256 {scored}" in err
        verdict = json.loads(verdict_path.read_text())
        assert verdict["failed"] == [f"{MODEL}.weights"] and verdict["challengers"] == {}
    finally:
        weights.write_bytes(original)
        client.set_model_version_tag(MODEL, "1", "anonlab.weights_sha256", scored)
        metrics_path.write_text(saved)
        for alias in ("challenger", "champion"):
            if Registry(project.root).by_alias(MODEL, alias):
                client.delete_registered_model_alias(MODEL, alias)


def test_promote_without_challenger_says_what_to_do(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(project, "validate", "promote", "--model", "nobody") == 2
    err = capsys.readouterr().err
    assert "no version has the alias 'challenger'" in err and "anonlab validate" in err


def _register_other_weights(project: Project) -> None:
    """New weights for MODEL (version 1's, moved by seeded noise) in its models folder,
    registered as training registers a model: version 2, tagged with their sha256. (How
    training gets there is tests/training/test_train.py's; this module's fixture trains once.)"""
    from training.models import load_model_files

    models = project.artifacts / "models" / MODEL
    model, _ = load_model_files(models / "config.yaml", models / "weights.safetensors")
    noise = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=noise))
    save_weights(model, models / "weights.safetensors")
    weights, config = models / "weights.safetensors", models / "config.yaml"
    assert register_model(project.root, MODEL, weights, config) == "2"


def test_evaluate_scores_the_champion_beside_new_weights(project: Project) -> None:
    """A champion with other weights is scored on the same sets; the report shows both."""
    client = _client(project)
    client.set_registered_model_alias(MODEL, "champion", "1")
    models = project.artifacts / "models" / MODEL
    backup = project.root / "v1"
    shutil.copytree(models, backup, dirs_exist_ok=True)
    try:
        _register_other_weights(project)
        assert _cli(project, "evaluate") == 0
        entry = json.loads((project.artifacts / "eval" / "metrics.json").read_text())[MODEL]
        assert entry["version"] == "2" and entry["champion"]["version"] == "1"
        assert set(entry["champion"]["sets"]) == {"val", "holdout"}
        report = (project.artifacts / "eval" / "report.html").read_text()
        assert "Champion: version 1" in report
        experiment = client.get_experiment_by_name("anonlab/evaluate")
        runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
        latest = next(r for r in runs if _subject(r) == MODEL)
        assert any(k.startswith("champion/recall/holdout/") for k in latest.data.metrics)
    finally:
        client.delete_registered_model_alias(MODEL, "champion")
        shutil.rmtree(models)
        shutil.copytree(backup, models)


# -- the gate, on numbers ---------------------------------------------------------------------


def _cell(n: int, iou: float | None, coverage: float | None = None) -> dict[str, object]:
    return {"n": n, "iou": iou, "coverage": iou if coverage is None else coverage}


def _entry(face_all: dict, face_tiny: dict, champion: dict | None = None) -> dict:
    entry: dict = {"sets": {"holdout": {"recall": {"face": {"all": face_all, "tiny": face_tiny}}}}}
    if champion is not None:
        entry["champion"] = {"version": "3", "sets": {"holdout": {"recall": {"face": champion}}}}
    return entry


EVAL_CFG: EvaluateConfig = load_project(
    REPO / "params.yaml", ["evaluate.target_recall=0.9"]
).params.evaluate
GATE = ValidateConfig(
    gate_metrics=["iou", "coverage"],
    buckets=["tiny", "small", "medium", "large", "all"],
    estimate="point",
    tolerance=0.02,
    min_objects=10,
    max_shift=0.5,
    data_min_objects=20,
)
SHA = "a" * 64  # the member's weights, as evaluate records them


def _metrics(anonymizer: dict | None, member: dict) -> dict:
    """metrics.json of one model `m` (`member`) and, unless None, the anonymizer made of it."""
    metrics: dict = {"m": {**member, "weights_sha256": SHA}}
    if anonymizer is not None:
        members = {"m": {"weights_sha256": SHA, "version": None}}
        metrics["anonymizer"] = {**anonymizer, "members": members}
    return metrics


def _gate(anonymizer: dict | None, member: dict | None = None, validate=GATE) -> list:
    """The gate's checks of the anonymizer's entry `anonymizer`, its member scoring `member`
    (default: the same numbers)."""
    member = anonymizer if member is None else member
    metrics = _metrics(anonymizer, member)
    return gate(metrics, models=["m"], evaluate=EVAL_CFG, validate=validate)


def _failed(checks: list) -> dict[str, str]:
    """The failed checks that fail the gate (error level)."""
    return {c.name: c.message for c in checks if not c.passed and c.severity == "error"}


def test_gate_holds_each_class_to_the_target_on_iou_and_coverage() -> None:
    assert not _failed(_gate(_entry(_cell(40, 0.95), _cell(20, 0.9))))
    low = _gate(_entry(_cell(40, 0.95, coverage=0.85), _cell(20, 0.9)))
    assert set(_failed(low)) == {"anonymizer.holdout.target.coverage"}
    assert "face/all 0.850 < 0.900 (n=40)" in _failed(low)["anonymizer.holdout.target.coverage"]


def test_gate_judges_the_anonymizer_and_shows_each_member() -> None:
    # The member alone misses faces the anonymizer hides (heads from the keypoint model): the
    # anonymizer ships, so it passes; the member's shortfall is shown, not gated.
    above, below = _entry(_cell(40, 0.97), _cell(20, 0.95)), _entry(_cell(40, 0.6), _cell(20, 0.5))
    checks = _gate(above, member=below)
    assert not _failed(checks)
    shown = {c.name: c for c in checks if not c.passed}
    assert set(shown) == {"m.holdout.target.iou", "m.holdout.target.coverage"}
    assert all(c.severity == "warning" for c in shown.values())
    assert "shown, not gated" in shown["m.holdout.target.iou"].message
    assert "face/all 0.600 < 0.900 (n=40)" in shown["m.holdout.target.iou"].message
    # The reverse: the member reaches the targets, what ships does not.
    failed = _failed(_gate(below, member=above))
    assert set(failed) == {"anonymizer.holdout.target.iou", "anonymizer.holdout.target.coverage"}
    assert failed["anonymizer.holdout.target.iou"].startswith("anonymizer on holdout: iou recall")


def test_gate_without_the_anonymizer_entry_says_to_evaluate_again() -> None:
    entry = _entry(_cell(40, 0.97), _cell(20, 0.95))
    checks = gate(_metrics(None, entry), models=["m"], evaluate=EVAL_CFG, validate=GATE)
    failed = _failed(checks)
    assert set(failed) == {"anonymizer.evaluated"}
    message = failed["anonymizer.evaluated"]
    assert "has no `anonymizer` entry (written by an older evaluate)" in message
    assert "run `anonlab evaluate` again" in message
    # A model of train.models without an entry fails too.
    missing = gate(_metrics(entry, entry), models=["m", "k"], evaluate=EVAL_CFG, validate=GATE)
    assert set(_failed(missing)) == {"k.evaluated"}


def test_gate_fails_an_anonymizer_that_ran_other_weights_than_its_member() -> None:
    entry = _entry(_cell(40, 0.97), _cell(20, 0.95))
    metrics = _metrics(entry, entry)
    metrics["anonymizer"]["members"]["m"]["weights_sha256"] = "b" * 64
    failed = _failed(gate(metrics, models=["m"], evaluate=EVAL_CFG, validate=GATE))
    assert set(failed) == {"anonymizer.members"}
    message = failed["anonymizer.members"]
    assert f"ran m with weights sha256 {'b' * 64}, but m's entry records sha256 {SHA}" in message
    # A member that is not a model of train.models.
    metrics = _metrics(entry, entry)
    metrics["anonymizer"]["members"]["x"] = {"weights_sha256": SHA, "version": None}
    failed = _failed(gate(metrics, models=["m"], evaluate=EVAL_CFG, validate=GATE))
    assert "x is not a model of train.models ['m']" in failed["anonymizer.members"]


def test_gate_judges_every_size_bucket_without_a_champion() -> None:
    # Distant faces collapse while all sizes together still reach the target: no champion to
    # compare with, and the gate still fails, naming the bucket.
    entry = _entry(_cell(200, 0.96), _cell(12, 0.5))
    failed = _failed(_gate(entry))
    iou = "anonymizer.holdout.target.iou"
    assert set(failed) == {iou, "anonymizer.holdout.target.coverage"}
    assert "face/tiny 0.500 < 0.900 (n=12)" in failed[iou]
    assert "face/all" not in failed[iou]
    # With fewer than min_objects tiny faces the bucket is reported, not judged.
    few = _gate(_entry(_cell(200, 0.96), _cell(9, 0.5)))
    assert not _failed(few)
    details = next(c for c in few if c.name == iou).details
    assert details["face/tiny"] == {
        "n": 9,
        "value": 0.5,
        "interval": None,
        "estimate": 0.5,
        "target": 0.9,
        "judged": False,
    }
    # A gate that judges `all` only (the demo's) does not see the collapse.
    blind = GATE.model_copy(update={"buckets": ["all"]})
    assert not _failed(_gate(entry, validate=blind))


def test_gate_on_the_lower_bound_needs_the_interval_above_the_target() -> None:
    lower = GATE.model_copy(update={"estimate": "lower"})
    narrow = {"n": 400, "iou": 0.95, "iou_ci": [0.92, 0.97], "coverage": 0.95}
    narrow["coverage_ci"] = [0.92, 0.97]
    wide = {"n": 20, "iou": 0.95, "iou_ci": [0.85, 1.0], "coverage": 0.95}
    wide["coverage_ci"] = [0.85, 1.0]
    assert not _failed(_gate(_entry(narrow, narrow), validate=lower))
    # The same recall from 20 objects: the point passes, the lower bound does not.
    assert not _failed(_gate(_entry(wide, wide)))
    message = _failed(_gate(_entry(wide, wide), validate=lower))["anonymizer.holdout.target.iou"]
    assert "face/all 0.950 [0.850, 1.000]: lower bound 0.850 < 0.900 (n=20)" in message
    assert "lower bound of the 95% interval" in message
    # No interval (evaluate.n_boot 0) cannot pass a gate on the lower bound, and says why.
    bare = _gate(_entry(_cell(40, 1.0), _cell(20, 1.0)), validate=lower)
    assert "evaluate.n_boot is 0" in _failed(bare)["anonymizer.holdout.target.iou"]


def test_gate_against_champion_uses_tolerance_and_ignores_small_buckets() -> None:
    # Champions are registered per model: each member is compared with its own.
    champion = {"all": _cell(40, 0.97), "tiny": _cell(20, 0.95)}
    assert not _failed(_gate(_entry(_cell(40, 0.955), _cell(20, 0.94), champion)))
    worse = _gate(_entry(_cell(40, 0.96), _cell(20, 0.90), champion))
    assert set(_failed(worse)) == {"m.holdout.champion"}
    assert "face/tiny iou 0.900 vs 0.950" in _failed(worse)["m.holdout.champion"]
    # The same drop on a bucket of 5 objects is reported by evaluate, not judged here.
    small = {"all": _cell(40, 0.97), "tiny": _cell(5, 0.95)}
    assert not _failed(_gate(_entry(_cell(40, 0.96), _cell(5, 0.6), small)))
