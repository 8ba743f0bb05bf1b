"""Speed and peak memory of `anonlab score` against pycocotools' own COCOeval, on one core.

    .venv/bin/python benchmarks/score_speed.py [--images 5000] [--dir DIR] [--json]

Generates (once, cached; not timed) seeded COCO ground truth and results: 1024x1024 images with
20 objects each (ellipses of every size bucket as compressed RLE masks, 2% crowd regions, four
classes) and 100 predictions each (masks too: jittered copies of the objects, some of the wrong
class, and false alarms). Then, each in its own process pinned to one CPU, on the same files:

  (a) pycocotools alone: load both files (json + COCO + loadRes), then COCOeval evaluate +
      accumulate + summarize for bbox and for segm;
  (b) the scorer's COCO backend alone (`evaluation.scoring.coco_summary.evaluate`:
      faster-coco-eval, accumulated as pycocotools): load both files (faster-coco-eval's COCO +
      loadRes), then bbox and segm;
  (c) `score_files` (evaluation/score.py), which reports its own phases: load (json + checks),
      coco (the backend, on the same inputs) and metrics (recall, coverage, intervals, false
      positives, curves, operating thresholds).

Each phase is measured in CPU seconds of its process (what it costs, even when other work shares
the core) and in wall seconds; each process reports its peak resident memory. Targets (from the
issue): (c) in total at most 0.35x (a)'s evaluation (bbox + segm, loading excluded), CPU time;
(c)'s peak memory at most (a)'s.
"""

from __future__ import annotations

import os

# One thread in every library, set before numpy starts its own.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from evaluation.score import score_files  # noqa: E402
from evaluation.scoring.options import ScoreOptions  # noqa: E402

SIZE = 1024
CLASSES = ["face", "person", "license_plate", "vehicle"]
OBJECTS = 20
PREDICTIONS = 100
GENERATOR_VERSION = 1  # bump when the generator changes, so cached files are remade
TARGET_RATIO = 0.35  # (c) in total / (a)'s evaluation


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


def generate(images: int, seed: int = 0) -> Iterator[tuple[list[dict], list[dict]]]:
    """Per image, in id order: its annotations and its predictions."""
    rng = np.random.default_rng(seed)
    n_annotations = 0
    for image_id in range(1, images + 1):
        annotations, predictions, objects = [], [], []
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
            n_annotations += 1
            annotations.append(
                {
                    "id": n_annotations,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
        while len(predictions) < PREDICTIONS:
            if len(predictions) < PREDICTIONS // 2:  # near an object
                cx, cy, radius, category = objects[len(predictions) % OBJECTS]
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
        yield annotations, predictions


def prepare(folder: Path, images: int) -> tuple[Path, Path]:
    """GT.json and PRED.json, made once per settings, written as they are generated (the
    50,000-image case never holds its 5 million predictions in memory)."""
    gt_file, pred_file, stamp = folder / "GT.json", folder / "PRED.json", folder / "bench.json"
    settings = {"images": images, "version": GENERATOR_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == settings and pred_file.exists():
        return gt_file, pred_file
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    image_rows = [{"id": i, "width": SIZE, "height": SIZE} for i in range(1, images + 1)]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    with gt_file.open("w") as gt_out, pred_file.open("w") as pred_out:
        gt_out.write(f'{{"images": {json.dumps(image_rows)}, "annotations": [')
        pred_out.write("[")
        for k, (annotations, predictions) in enumerate(generate(images)):
            separator = "" if k == 0 else ", "
            gt_out.write(separator + ", ".join(map(json.dumps, annotations)))
            pred_out.write(separator + ", ".join(map(json.dumps, predictions)))
        gt_out.write(f'], "categories": {json.dumps(categories)}}}')
        pred_out.write("]")
    stamp.write_text(json.dumps(settings))
    return gt_file, pred_file


class Laps:
    """Wall and CPU seconds per phase (CPU under the phase's name + "_cpu")."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.since = (time.perf_counter(), time.process_time())

    def lap(self, phase: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.times[phase] = now[0] - self.since[0]
        self.times[f"{phase}_cpu"] = now[1] - self.since[1]
        self.since = now


def pycocotools_alone(gt_file: Path, pred_file: Path) -> dict[str, float]:
    """(a): pycocotools' COCO, loadRes and COCOeval, as a user runs them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    laps = Laps()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(pred_file))
        laps.lap("load")
        for iou_type in ("bbox", "segm"):
            evaluation = COCOeval(coco_gt, coco_dt, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            laps.lap(iou_type)
    return laps.times


def backend_alone(gt_file: Path, pred_file: Path) -> dict[str, float]:
    """(b): the scorer's COCO backend on faster-coco-eval's COCO and loadRes."""
    from faster_coco_eval import COCO

    from evaluation.scoring.coco_summary import evaluate

    laps = Laps()
    coco_gt = COCO(str(gt_file))
    coco_dt = coco_gt.loadRes(str(pred_file))
    laps.lap("load")
    for iou_type in ("bbox", "segm"):
        evaluate(coco_gt, coco_dt, iou_type)
        laps.lap(iou_type)
    return laps.times


def anonlab_score(gt_file: Path, pred_file: Path) -> dict[str, float]:
    """(c): `anonlab score` in process, its phases as it reports them."""
    times: dict[str, float] = {}
    score_files(gt_file, pred_file, ScoreOptions(), times)
    return times


SIDES: dict[str, Callable[[Path, Path], dict[str, float]]] = {
    "a": pycocotools_alone,
    "b": backend_alone,
    "c": anonlab_score,
}


def run_side(side: str, gt_file: Path, pred_file: Path) -> dict[str, float]:
    """One side in a fresh process pinned to one CPU (so that each peak memory is its own)."""
    command = [sys.executable, __file__, "--side", side, "--gt", str(gt_file)]
    done = subprocess.run([*command, "--pred", str(pred_file)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"side ({side}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_side(side: str, gt_file: Path, pred_file: Path) -> dict[str, float]:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    times = SIDES[side](gt_file, pred_file)
    phases = ("bbox", "segm") if side in "ab" else ("coco", "metrics")
    for suffix in ("", "_cpu"):
        work = sum(times[f"{p}{suffix}"] for p in phases)
        times[f"{'eval' if side in 'ab' else 'total'}{suffix}"] = work + (
            times[f"load{suffix}"] if side == "c" else 0.0
        )
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images (default 5000)")
    parser.add_argument("--dir", type=Path, help="where to cache the files (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--gt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pred", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(one_side(args.side, args.gt, args.pred)))
        return 0

    folder = args.dir or Path(tempfile.gettempdir()) / f"anonlab-score-bench-{args.images}"
    gt_file, pred_file = prepare(folder, args.images)
    a, b, c = (run_side(side, gt_file, pred_file) for side in "abc")
    ratio = c["total_cpu"] / a["eval_cpu"]
    results = {
        "images": args.images,
        "objects": args.images * OBJECTS,
        "predictions": args.images * PREDICTIONS,
        "pycocotools_s": a,
        "backend_s": b,
        "anonlab_score_s": c,
        "ratio_score_total_over_pycocotools_eval_cpu": ratio,
        "ratio_score_total_over_pycocotools_eval_wall": c["total"] / a["eval"],
        "ratio_backend_over_pycocotools_eval_cpu": b["eval_cpu"] / a["eval_cpu"],
        "ratio_metrics_over_pycocotools_eval_cpu": c["metrics_cpu"] / a["eval_cpu"],
        "target": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "meets_memory": c["peak_rss_mb"] <= a["peak_rss_mb"],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    def row(label: str, times: dict[str, float], phase: str) -> None:
        print(f"      {label:<44}{times[phase + '_cpu']:8.1f}{times[phase]:8.1f}")

    print(
        f"{args.images} images {SIZE}x{SIZE}, {results['objects']} objects, "
        f"{results['predictions']} predictions (RLE masks), one core each, one run"
    )
    print(f"      {'seconds':<44}{'cpu':>8}{'wall':>8}")
    print(f"  (a) pycocotools alone (peak {a['peak_rss_mb']:.0f} MB)")
    row("load (json + COCO + loadRes)", a, "load")
    row("COCOeval bbox", a, "bbox")
    row("COCOeval segm", a, "segm")
    row("evaluation, bbox + segm", a, "eval")
    print(f"  (b) the scorer's COCO backend alone (peak {b['peak_rss_mb']:.0f} MB)")
    row("load (json + COCO + loadRes)", b, "load")
    row("bbox", b, "bbox")
    row("segm", b, "segm")
    row("evaluation, bbox + segm", b, "eval")
    print(f"  (c) anonlab score, score_files (peak {c['peak_rss_mb']:.0f} MB)")
    row("load (json + checks)", c, "load")
    row("coco.* (the backend, bbox + segm)", c, "coco")
    row("anonymization metrics", c, "metrics")
    row("total", c, "total")
    for label, key in (
        ("(b) evaluation / (a) evaluation", "backend_over_pycocotools_eval_cpu"),
        ("(c) metrics / (a) evaluation", "metrics_over_pycocotools_eval_cpu"),
        ("(c) total / (a) evaluation", "score_total_over_pycocotools_eval_cpu"),
    ):
        print(f"  ratio {label:<42}{results['ratio_' + key]:8.3f}")
    verdict = "meets" if results["meets_target"] else "MISSES"
    print(f"target: (c) total <= {TARGET_RATIO:.2f} x (a) evaluation (cpu): {verdict}")
    memory = "meets" if results["meets_memory"] else "MISSES"
    print(f"target: (c) peak memory <= (a) peak memory: {memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
