"""Training data loading throughput on one core: `CocoDetection` with and without augmentation.

    .venv/bin/python benchmarks/loader_throughput.py [--count 200] [--dir DIR] [--json]

Generates (once, cached; not timed) 1024x1024 JPEG tiles at quality 90 with a handful of
instances each (faces, plates, vehicles as RLE masks with boxes, and a person with five head
keypoints) and a COCO file like `prepare` writes. Then times samples/s, in one process pinned to
one CPU with torch and OpenCV on one thread:

  (a) `CocoDetection` with the project's default augmentation (conf/augment/default.yaml:
      flip, random resized crop, colour, blur, JPEG compression, night darkening), its crop's
      output size set to the tile size;
  (b) the same dataset without augmentation (decode, RLE masks, targets, to tensor);
  (c) the decode floor: PIL decode + to-tensor only, no masks or targets.

All three yield uint8 CxHxW tensors, as the dataset does (float conversion happens on the
model's device).

The three take turns every 20 samples, so load from other processes weighs on all alike; each
figure is the median over the rounds. Target (from the issue): (a) at least 40 samples/s.
"""

from __future__ import annotations

import os

# One thread in every library, set before numpy, OpenCV and torch start theirs.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from training.augment import build_augmenter  # noqa: E402
from training.dataset import CocoDetection  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZE = 1024
CLASSES = ["face", "person", "license_plate", "vehicle"]
KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
GENERATOR_VERSION = 1  # bump when `tile` changes, so cached tiles are remade
CHUNK = 20
TARGET_RATE = 40.0


def default_augmentation() -> list[dict[str, object]]:
    """The project's default augmentation (conf/augment/default.yaml), with the output size of
    its random resized crop set to this benchmark's tile size."""
    import yaml

    spec = yaml.safe_load((REPO / "conf" / "augment" / "default.yaml").read_text())["transforms"]
    for entry in spec:
        if entry["name"] == "RandomResizedCrop":
            entry["size"] = [SIZE, SIZE]
    return spec


def tile(seed: int) -> tuple[np.ndarray, list[dict[str, object]]]:
    """A street-like tile and its instances: ellipse faces, rectangle plates and vehicles,
    and a person (a body polygon) with head keypoints."""
    rng = np.random.default_rng(seed)
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = rng.integers(60, 200, 3)
    noise = rng.normal(0, 6, (SIZE, SIZE, 1))
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    anns: list[dict[str, object]] = []

    def add(mask: np.ndarray, category: int, keypoints: list[float] | None = None) -> None:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        ann: dict[str, object] = {
            "category_id": category,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": int(mask.sum()),
            "segmentation": rle,
            "iscrowd": 0,
        }
        if keypoints is not None:
            ann.update(keypoints=keypoints, num_keypoints=5)
        anns.append(ann)

    for _ in range(int(rng.integers(1, 4))):  # vehicles
        m = np.zeros((SIZE, SIZE), np.uint8)
        x, y = int(rng.integers(0, SIZE - 300)), int(rng.integers(300, SIZE - 160))
        w, h = int(rng.integers(150, 300)), int(rng.integers(80, 160))
        cv2.rectangle(m, (x, y), (x + w, y + h), 1, -1)
        cv2.rectangle(image, (x, y), (x + w, y + h), rng.integers(0, 255, 3).tolist(), -1)
        add(m, 4)
        p = np.zeros((SIZE, SIZE), np.uint8)  # its plate
        cv2.rectangle(p, (x + w // 2 - 20, y + h - 20), (x + w // 2 + 20, y + h - 10), 1, -1)
        add(p, 3)
    # A person with a face and head keypoints.
    m = np.zeros((SIZE, SIZE), np.uint8)
    cx, top = int(rng.integers(100, SIZE - 100)), int(rng.integers(50, SIZE - 500))
    body = np.array([[cx - 15, top], [cx + 15, top], [cx + 50, top + 400], [cx - 50, top + 400]])
    cv2.fillPoly(m, [body.astype(np.int32)], 1)
    cv2.circle(m, (cx, top), 25, 1, -1)
    cv2.fillPoly(image, [body.astype(np.int32)], (40, 40, 60))
    kp = [cx, top, 2, cx + 8, top - 6, 2, cx - 8, top - 6, 2, cx + 20, top, 1, cx - 20, top, 1]
    add(m, 2, [float(v) for v in kp])
    f = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(f, (cx, top), (20, 25), 0, 0, 360, 1, -1)
    add(f, 1)
    return image, anns


def prepare(folder: Path, count: int) -> Path:
    """The tiles and `train.json`, made once per settings."""
    coco_file = folder / "train.json"
    stamp = folder / "bench.json"
    settings = {"count": count, "version": GENERATOR_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == settings and coco_file.exists():
        return coco_file
    (folder / "tiles").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        pixels, anns = tile(i)
        name = f"tiles/{i:05d}.jpg"
        Image.fromarray(pixels).save(folder / name, "JPEG", quality=90)
        images.append({"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE})
        for a in anns:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": i + 1})
    categories: list[dict[str, object]] = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    categories[1].update(keypoints=KEYPOINTS, skeleton=[])
    coco = {"images": images, "annotations": annotations, "categories": categories}
    coco_file.write_text(json.dumps(coco))
    stamp.write_text(json.dumps(settings))
    return coco_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="tiles (default 200)")
    parser.add_argument("--dir", type=Path, help="where to cache the tiles (default: temp dir)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    folder = args.dir or Path(tempfile.gettempdir()) / "anonlab-loader-bench"
    coco_file = prepare(folder, args.count)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    augmented = CocoDetection(
        coco_file,
        classes=CLASSES,
        keypoint_names=KEYPOINTS,
        augmenter=build_augmenter(default_augmentation(), keypoint_names=KEYPOINTS, seed=0),
    )
    plain = CocoDetection(coco_file, classes=CLASSES, keypoint_names=KEYPOINTS)

    def floor(i: int) -> torch.Tensor:
        path = folder / plain.images[i]["file_name"]
        pixels = np.array(Image.open(path).convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1)

    methods: dict[str, Callable[[int], object]] = {
        "(a) dataset + default augmentation": augmented.__getitem__,
        "(b) dataset, no augmentation": plain.__getitem__,
        "(c) floor: PIL decode + to-tensor": floor,
    }
    for fn in methods.values():  # warm-up: imports, first-call caches
        fn(0)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    n = len(plain)
    for _ in range(args.rounds):
        spent = dict.fromkeys(methods, 0.0)
        for start in range(0, n, CHUNK):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                for i in range(start, min(start + CHUNK, n)):
                    fn(i)
                spent[name] += time.perf_counter() - t0
        for name in methods:
            rates[name].append(n / spent[name])
    median = {name: statistics.median(r) for name, r in rates.items()}
    names = list(methods)
    results = {
        "count": n,
        "rounds": args.rounds,
        "samples_per_s": median,
        "ratio_a_over_b": median[names[0]] / median[names[1]],
        "ratio_a_over_floor": median[names[0]] / median[names[2]],
        "ratio_b_over_floor": median[names[1]] / median[names[2]],
        "target": TARGET_RATE,
        "meets_target": median[names[0]] >= TARGET_RATE,
        "augmentation": default_augmentation(),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{n} tiles {SIZE}x{SIZE}, one core, median of {args.rounds} rounds")
    for name in names:
        rate = median[name]
        print(f"  {name:<38} {rate:7.1f} samples/s  {1000 / rate:6.2f} ms/sample")
    print(f"  ratio (a)/(b)                          {results['ratio_a_over_b']:7.2f}")
    print(f"  ratio (a)/(c)                          {results['ratio_a_over_floor']:7.2f}")
    print(f"  ratio (b)/(c)                          {results['ratio_b_over_floor']:7.2f}")
    verdict = "meets" if results["meets_target"] else "MISSES"
    print(f"target: (a) >= {TARGET_RATE:.0f} samples/s per core: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
