"""Speed of `anonlab score` against pycocotools' own COCOeval, on one core.

    .venv/bin/python benchmarks/score_speed.py [--images 5000] [--dir DIR] [--json]

Generates (once, cached; not timed) seeded COCO ground truth and results: 1024x1024 images with
20 objects each (ellipses of every size bucket as compressed RLE masks, 2% crowd regions, four
classes) and 100 predictions each (masks too: jittered copies of the objects, some of the wrong
class, and false alarms). Then, in one process pinned to one CPU:

  (a) pycocotools alone: load both files (json + COCO + loadRes), then COCOeval evaluate +
      accumulate + summarize for bbox and for segm;
  (b) `score_files` (evaluation/score.py), which reports its own phases: load (json + checks),
      coco (the same pycocotools evaluation, on the same inputs) and metrics (recall, coverage,
      intervals, false positives, curves, operating thresholds).

Each phase is measured in CPU seconds of this process (what it costs, even when other work
shares the core) and in wall seconds. Target (from the issue): metrics <= 50% of (a)'s
evaluation CPU time (loading excluded from both).
"""

from __future__ import annotations

import os

# One thread in every library, set before numpy starts its own.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from evaluation.score import score_files  # noqa: E402
from evaluation.scoring.options import ScoreOptions  # noqa: E402

SIZE = 1024
CLASSES = ["face", "person", "license_plate", "vehicle"]
OBJECTS = 20
PREDICTIONS = 100
GENERATOR_VERSION = 1  # bump when the generator changes, so cached files are remade
TARGET_RATIO = 0.5


def ellipse_rle(cx: float, cy: float, rx: float, ry: float) -> dict | None:
    """Compressed RLE of a filled axis-aligned ellipse, built from its columns (COCO RLE runs
    down columns) without drawing the 1024x1024 mask."""
    xs = np.arange(max(0, int(cx - rx) - 1), min(SIZE, int(cx + rx) + 2))
    t = 1 - ((xs + 0.5 - cx) / rx) ** 2
    xs, t = xs[t >= 0], t[t >= 0]
    half = ry * np.sqrt(t)
    top = np.clip(np.ceil(cy - half - 0.5), 0, SIZE).astype(np.int64)
    bottom = np.clip(np.floor(cy + half - 0.5) + 1, 0, SIZE).astype(np.int64)
    keep = bottom > top
    xs, top, bottom = xs[keep], top[keep], bottom[keep]
    if not len(xs):
        return None
    starts, ends = xs * SIZE + top, xs * SIZE + bottom
    counts = np.empty(2 * len(xs) + 1, np.int64)
    counts[0] = starts[0]
    counts[1:-1:2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = SIZE * SIZE - ends[-1]
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [SIZE, SIZE]}, SIZE, SIZE)
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}


def region(rng: np.random.Generator, cx: float, cy: float, radius: float) -> tuple | None:
    rx, ry = radius * rng.uniform(0.7, 1.3), radius * rng.uniform(0.7, 1.3)
    rle = ellipse_rle(cx, cy, rx, ry)
    if rle is None:
        return None
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return rle, bbox, int(mask_utils.area(rle))


def generate(images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    image_rows, annotations, predictions = [], [], []
    for image_id in range(1, images + 1):
        image_rows.append({"id": image_id, "width": SIZE, "height": SIZE})
        objects = []
        while len(objects) < OBJECTS:
            radius = float(np.exp(rng.uniform(np.log(3), np.log(150))))
            cx, cy = rng.uniform(0, SIZE, 2)
            made = region(rng, cx, cy, radius)
            if made is None:
                continue
            rle, bbox, area = made
            category = int(rng.integers(1, len(CLASSES) + 1))
            crowd = int(rng.random() < 0.02)
            objects.append((cx, cy, radius, category))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
        made_predictions = 0
        while made_predictions < PREDICTIONS:
            if made_predictions < PREDICTIONS // 2:  # near an object
                cx, cy, radius, category = objects[made_predictions % OBJECTS]
                cx, cy = np.array([cx, cy]) + rng.normal(0, 0.15 * radius, 2)
                radius *= rng.uniform(0.8, 1.2)
                if rng.random() < 0.1:
                    category = int(rng.integers(1, len(CLASSES) + 1))
            else:  # a false alarm
                cx, cy = rng.uniform(0, SIZE, 2)
                radius = float(np.exp(rng.uniform(np.log(3), np.log(60))))
                category = int(rng.integers(1, len(CLASSES) + 1))
            made = region(rng, cx, cy, radius)
            if made is None:
                continue
            rle, bbox, _ = made
            predictions.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "score": round(float(rng.random()), 4),
                    "segmentation": rle,
                }
            )
            made_predictions += 1
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    return {"images": image_rows, "annotations": annotations, "categories": categories}, predictions


def prepare(folder: Path, images: int) -> tuple[Path, Path]:
    """GT.json and PRED.json, made once per settings."""
    gt_file, pred_file, stamp = folder / "GT.json", folder / "PRED.json", folder / "bench.json"
    settings = {"images": images, "version": GENERATOR_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == settings and pred_file.exists():
        return gt_file, pred_file
    folder.mkdir(parents=True, exist_ok=True)
    gt, predictions = generate(images)
    gt_file.write_text(json.dumps(gt))
    pred_file.write_text(json.dumps(predictions))
    stamp.write_text(json.dumps(settings))
    return gt_file, pred_file


def pycocotools_alone(gt_file: Path, pred_file: Path) -> dict[str, float]:
    """Seconds per phase, wall and (under name + "_cpu") CPU, as `score_files` reports them."""
    times: dict[str, float] = {}

    def lap(phase: str, since: tuple[float, float]) -> None:
        times[phase] = time.perf_counter() - since[0]
        times[f"{phase}_cpu"] = time.process_time() - since[1]

    with contextlib.redirect_stdout(io.StringIO()):
        start = (time.perf_counter(), time.process_time())
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(pred_file))
        lap("load", start)
        for iou_type in ("bbox", "segm"):
            start = (time.perf_counter(), time.process_time())
            evaluation = COCOeval(coco_gt, coco_dt, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            lap(iou_type, start)
    for suffix in ("", "_cpu"):
        times[f"eval{suffix}"] = times[f"bbox{suffix}"] + times[f"segm{suffix}"]
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images (default 5000)")
    parser.add_argument("--dir", type=Path, help="where to cache the files (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    folder = args.dir or Path(tempfile.gettempdir()) / f"anonlab-score-bench-{args.images}"
    gt_file, pred_file = prepare(folder, args.images)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    reference = pycocotools_alone(gt_file, pred_file)
    gc.collect()
    ours: dict[str, float] = {}
    metrics = score_files(gt_file, pred_file, ScoreOptions(), ours)
    for suffix in ("", "_cpu"):
        ours[f"total{suffix}"] = sum(ours[f"{p}{suffix}"] for p in ("load", "coco", "metrics"))
    ratio = ours["metrics_cpu"] / reference["eval_cpu"]
    results = {
        "images": args.images,
        "objects": args.images * OBJECTS,
        "predictions": args.images * PREDICTIONS,
        "pycocotools_s": reference,
        "anonlab_score_s": ours,
        "ratio_metrics_over_pycocotools_eval_cpu": ratio,
        "ratio_metrics_over_pycocotools_eval_wall": ours["metrics"] / reference["eval"],
        "target": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "AP_segm": metrics.coco["segm"]["AP"],
        "recall_face_all": metrics.recall["face"]["all"].iou,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    def row(label: str, times: dict[str, float], phase: str) -> None:
        print(f"      {label:<40}{times[phase + '_cpu']:8.1f}{times[phase]:8.1f}")

    print(
        f"{args.images} images {SIZE}x{SIZE}, {results['objects']} objects, "
        f"{results['predictions']} predictions (RLE masks), one core, one run"
    )
    print(f"      {'seconds':<40}{'cpu':>8}{'wall':>8}")
    print("  (a) pycocotools alone")
    row("load (json + COCO + loadRes)", reference, "load")
    row("COCOeval bbox", reference, "bbox")
    row("COCOeval segm", reference, "segm")
    row("evaluation, bbox + segm", reference, "eval")
    print("  (b) anonlab score (score_files)")
    row("load (json + checks)", ours, "load")
    row("coco.* (pycocotools bbox + segm)", ours, "coco")
    row("anonymization metrics", ours, "metrics")
    row("total", ours, "total")
    wall_ratio = results["ratio_metrics_over_pycocotools_eval_wall"]
    print(f"  ratio metrics / (a) evaluation              {ratio:8.3f}{wall_ratio:8.3f}")
    verdict = "meets" if results["meets_target"] else "MISSES"
    print(f"target: metrics <= {TARGET_RATIO:.0%} of pycocotools' evaluation (cpu): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
