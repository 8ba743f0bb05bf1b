"""The anonymizer's recall in evaluate is what `anonlab blur` hides: on the same image files,
the exported tiny anonymizer (`shared_composite`: the tiny Mask R-CNN and the tiny Keypoint
R-CNN) is run once as evaluate runs it (each member's torch detector over the files, tiled as
the runtime tiles, then `evaluate_anonymizer`) and once by the runtime and the command line at
the thresholds evaluate chose (the head threshold included). Each hand-placed face's covered
share in evaluate must be the share of its pixels the runtime hides fully."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from evaluation.anonymizer import AnonymizerResult, AnonymizerSetup, MemberRun, evaluate_anonymizer
from evaluation.evaluate import score_options
from evaluation.predict import predict_set, torch_detector
from serving.cli import main as cli_main
from serving.params import load_project
from serving.runtime.anonymize import Style, hidden_mask
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import COMPOSITE, CompositeManifest, Member, load_composite
from serving.runtime.heads import HEAD
from serving.runtime.pipeline import Anonymized, Runtime
from serving.runtime.release import headed_json
from tests.images import jpeg_bytes, pil_bytes, texture

CLASSES = ["face", "person", "license_plate", "vehicle"]
# The images (width, height, texture seed, format): 240 x 120 is a panorama to the tiling
# (aspect 2), so hidden regions there wrap around its seam on both sides.
IMAGES = [(160, 120, 10, "jpg"), (160, 120, 11, "png"), (240, 120, 12, "png")]
# Hand-placed faces per image (x, y, w, h). The random-weight members find faces (score about
# 0.2) and, from the keypoint model's persons (about 0.5), heads at fixed places on these
# textures: about half of each image is hidden fully. These boxes were placed (by looking at
# those hidden pixels once) inside, outside and across those regions: about half the faces are
# covered, some only by heads (image 2's 12 px one), and some lie close to the 0.9 rule on
# either side (image 1's last, image 3's last). The test asserts that both outcomes and a
# heads-only face occur, so it cannot pass with an anonymizer that hides everything or nothing.
FACES = {
    1: [(36, 8, 24, 28), (90, 10, 20, 28), (60, 60, 30, 30), (20, 70, 30, 30), (116, 0, 20, 24)],
    2: [(20, 10, 30, 36), (80, 60, 30, 40), (20, 80, 24, 30), (147, 38, 12, 12)],
    3: [(0, 0, 40, 40), (30, 95, 40, 20), (150, 40, 14, 20), (172, 0, 20, 24)],
}


def _face_id(image_id: int, k: int) -> int:
    """The annotation id of FACES[image_id][k]."""
    return 10 * image_id + k


def _ground_truth(images: list[dict[str, Any]]) -> dict[str, Any]:
    annotations = [
        {
            "id": _face_id(image_id, k),
            "image_id": image_id,
            "category_id": 1,
            "bbox": [float(v) for v in box],
            "area": float(box[2] * box[3]),
            "iscrowd": 0,
        }
        for image_id, boxes in FACES.items()
        for k, box in enumerate(boxes)
    ]
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The image files in a folder, and their COCO ground truth (paths relative to it)."""
    folder = tmp_path_factory.mktemp("parity") / "images"
    folder.mkdir()
    images = []
    for image_id, (width, height, seed, fmt) in enumerate(IMAGES, start=1):
        rgb = texture(width, height, seed=seed)
        data = jpeg_bytes(rgb) if fmt == "jpg" else pil_bytes(rgb, "PNG")
        name = f"street-{image_id}.{fmt}"
        (folder / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    return folder, _ground_truth(images)


def _evaluated(composite: Path, folder: Path, gt: dict[str, Any]) -> AnonymizerResult:
    """The anonymizer as evaluate scores it: each member's model files (the weights its
    artifact ships) run by evaluate's detector over the files, then `evaluate_anonymizer` on
    val and a reference set, both this ground truth, wired as evaluate wires it."""
    root = composite.parent.parent.parent  # <root>/artifacts/serving/anonymizer-.../
    params = load_project(root / "params.yaml").params
    loaded = load_composite(composite)
    runs = []
    for artifact in loaded.members:
        m = artifact.manifest
        model = root / "artifacts" / "models" / m.name
        assert file_sha256(model / "weights.safetensors") == m.weights_sha256
        detector, model_cfg = torch_detector(
            model / "config.yaml",
            model / "weights.safetensors",
            score_threshold=m.score_floor,
            tile=m.tiling_spec.tile,
            mask_threshold=m.mask_threshold,
            device="cpu",
            keypoints=True,
        )
        classes = list(model_cfg["classes"])
        _, per_image = predict_set(
            gt["images"],
            detector,
            m.tiling_spec,
            images_root=folder,
            category_ids=[CLASSES.index(c) + 1 for c in classes],
            desc=m.name,
        )
        # The composite's thresholds for the classes it takes from this member, as evaluate
        # copies a supplier's; the keypoint member's own person threshold (the head
        # threshold's cap).
        supplied = loaded.manifest.supplies
        thresholds = {
            c: {
                "threshold": (
                    loaded.manifest.thresholds if supplied[c] == m.name else m.thresholds
                )[c],
                "val_recall": None,
                "reached": False,
            }
            for c in classes
        }
        member = Member(
            m.name,
            tuple(classes),
            str(model_cfg["kind"]),
            tuple(model_cfg.get("keypoint_names") or ()),
        )
        runs.append(
            MemberRun(
                member,
                m.weights_sha256,
                m.version,
                thresholds,
                {},
                {"val": per_image, "ref": per_image},
            )
        )
    cfg = params.evaluate
    heads = params.anonymizer.heads
    setup = AnonymizerSetup(
        heads=heads.spec() if heads.enabled else None,
        styles={c: Style.from_dict(dict(s)) for c, s in params.export.styles.items()},
        spec=loaded.members[0].manifest.tiling_spec,
        options=score_options(
            cfg,
            params.taxonomy.classes,
            cfg.min_threshold,
            seed=params.seed,
            identifiable=params.taxonomy.identifiable,
            per_object=True,
        ),
        face_target=cfg.target("face"),
    )
    return evaluate_anonymizer(runs, {"val": gt, "ref": gt}, setup)


def _as_evaluated(composite: Path, result: AnonymizerResult, into: Path) -> Path:
    """A copy of `composite` whose composite.json holds evaluate's composition: its supplies,
    thresholds (the head's included), styles and head geometry."""
    folder = Path(shutil.copytree(composite, into / composite.name))
    raw = json.loads((folder / COMPOSITE).read_text(encoding="utf-8"))
    composition = result.composition
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    body.update(
        supplies=dict(composition.supplies),
        thresholds=dict(composition.thresholds),
        styles={c: s.to_dict() for c, s in result.styles.items()},
        heads=composition.heads.to_dict() if composition.heads is not None else {},
    )
    manifest = CompositeManifest(**body)
    (folder / COMPOSITE).write_text(headed_json(manifest.to_json(), "notice"), encoding="utf-8")
    return folder


def _face_shares(hidden: dict[int, np.ndarray]) -> dict[int, float]:
    """Per face annotation id, the share of its box's pixels inside its image's hidden mask."""
    out = {}
    for image_id, boxes in FACES.items():
        for k, (x, y, w, h) in enumerate(boxes):
            out[_face_id(image_id, k)] = float(hidden[image_id][y : y + h, x : x + w].mean())
    return out


def test_evaluates_face_coverage_is_what_blur_hides_fully(
    shared_composite: Path, files: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    folder, gt = files
    result = _evaluated(shared_composite, folder, gt)
    anonymizer = _as_evaluated(shared_composite, result, tmp_path)

    runtime = Runtime.load([anonymizer], backend="torch", device="cpu", allow_demo=True)
    # The runtime runs evaluate's very composition: members, supplies, thresholds, heads.
    assert runtime.composition == result.composition
    assert HEAD in runtime.composition.supplies
    done: dict[int, Anonymized] = {
        image["id"]: runtime.anonymize_bytes((folder / image["file_name"]).read_bytes())
        for image in gt["images"]
    }

    # anonlab blur writes what the runtime wrote; its --masks PNG is every pixel it changed
    # (alpha > 0, feathered edges included), the runtime's hidden_mask without `full`.
    out = tmp_path / "out"
    argv = ["blur", str(folder), "--model", str(anonymizer), "--backend", "torch"]
    argv += ["--device", "cpu", "--allow-demo", "--out", str(out), "--masks", "--sidecar"]
    assert cli_main(argv) == 0
    for image in gt["images"]:
        target = out / image["file_name"]
        mine = done[image["id"]]
        assert target.read_bytes() == mine.data, image["file_name"]
        sidecar = json.loads(target.with_name(target.name + ".json").read_text(encoding="utf-8"))
        assert sidecar["detections"] == mine.detections_json()
        mask = cv2.imread(str(target.with_name(target.name + ".mask.png")), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(mask > 0, runtime.hidden_mask(mine))

    # What evaluate counts as covered: the pixels hidden fully (no feathered edge).
    hidden = {i: runtime.hidden_mask(d, full=True) for i, d in done.items()}
    shares = _face_shares(hidden)
    coverage = result.scores["ref"].options["coverage"]
    assert coverage == 0.9  # evaluate.coverage, the committed rule
    objects = result.scores["ref"].objects
    assert objects is not None, "evaluate_anonymizer dropped per_object: no per-face outcomes"
    by_id = {o.id: o for o in objects}
    assert set(shares) <= set(by_id)
    for face, share in shares.items():
        outcome = by_id[face]
        assert outcome.coverage == pytest.approx(share, abs=1e-6), (face, outcome, share)
        assert outcome.covered == (share >= coverage), (face, outcome, share)
    covered = sum(share >= coverage for share in shares.values())
    assert 0 < covered < len(shares), f"{covered} of {len(shares)} faces covered: not telling"
    # The faces only the heads cover (report.html's gallery): covered by what the runtime hides
    # fully, not by what it hides fully without its head regions.
    head = runtime.classes.index(HEAD) + 1
    without_heads = {
        i: hidden_mask(
            d.width,
            d.height,
            d.detections.select(d.detections.labels != head),
            runtime.classes,
            runtime.styles,
            panorama=d.panorama,
            full=True,
        )
        for i, d in done.items()
    }
    base = _face_shares(without_heads)
    by_heads = {f for f, share in shares.items() if share >= coverage > base[f]}
    assert by_heads and {f for f, _ in result.heads_only["ref"]} == by_heads
    for name in ("val", "ref"):
        cell = result.scores[name].recall["face"]["all"]
        assert cell.n == len(shares)
        assert round(cell.coverage * cell.n) == covered, (name, cell, covered)
