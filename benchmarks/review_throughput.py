"""Review throughput on one core: our reduced-decode scoring against a full-decode baseline.

    uv run --frozen python benchmarks/review_throughput.py [--count 500] [--dir DIR] [--json]

Generates (once, cached; not timed) street-like 1920x1080 JPEGs at quality 90: sky, facades
with windows, road markings, vehicles, poles, optical blur and sensor noise. Then times, in one
process pinned to one CPU with every library on one thread:

  (a) review's path: `score_image` = JPEG DCT-scaled luma decode, working image, mean,
      over-exposure, Laplacian variance, pHash and the working-image digest;
  (b) a straightforward baseline: `Image.open(p).convert("L")` at full resolution, then the
      same mean, over-exposure, Laplacian variance and pHash on the full image;
  (c) the whole stage, `run_review` with workers=1 (scoring, duplicates, clustering, report).

(a), (b) and the decode floor (libjpeg alone at 1/8 scale, luma only: entropy decoding, which
no scoring can skip) take turns every 20 images, so that load from other processes on the
machine weighs on all alike; each figure is the median over the rounds.

JPEG decoding cost grows with the compressed size (entropy decoding cannot be skipped at any
scale), so the file size is printed with the results; `--noise` changes it.
"""

from __future__ import annotations

import os

# One thread in every library, set before numpy, OpenCV (and torch, were it loaded) start theirs.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from data.config import ReviewConfig  # noqa: E402
from data.image_scores import (  # noqa: E402
    ImageScores,
    draft_size,
    hamming,
    luma_scores,
    phash,
    score_image,
)
from data.manifest import ManifestRecord, write_manifest  # noqa: E402
from data.review import run_review  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1920, 1080
GENERATOR_VERSION = 1  # bump when `street_scene` changes, so cached images are remade
TARGET_SPEEDUP = 5.0
CHUNK = 20  # images timed in a row per method before switching to the other
TARGET_RATE = 300.0


def street_scene(seed: int, width: int, height: int, noise: float) -> np.ndarray:
    """A street-like RGB frame: no two seeds alike, so review keeps them all."""
    rng = np.random.default_rng(seed)
    horizon = int(height * rng.uniform(0.42, 0.58))
    img = np.empty((height, width, 3), np.float32)
    top = rng.uniform([90, 130, 190], [140, 170, 235])
    low = rng.uniform([170, 185, 200], [215, 220, 235])
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - t) + low * t
    img[horizon:] = rng.uniform(70, 110) + rng.uniform(-6, 6, 3)
    x = int(rng.integers(-100, 0))
    while x < width:  # facades with rows of windows
        bw, bh = int(rng.integers(120, 420)), int(rng.integers(height // 8, horizon - 10))
        color = rng.uniform(60, 210, 3)
        left, top_y = max(x, 0), horizon - bh
        img[top_y:horizon, left : x + bw] = color
        ww, wh = int(rng.integers(14, 30)), int(rng.integers(18, 36))
        for wy in range(top_y + 12, horizon - wh - 8, wh + int(rng.integers(12, 24))):
            for wx in range(left + 10, min(x + bw, width) - ww - 6, ww + int(rng.integers(10, 22))):
                img[wy : wy + wh, wx : wx + ww] = color * 0.55
        x += bw + int(rng.integers(0, 40))
    cv2.line(img, (0, horizon + 4), (width, horizon + 4), (160, 160, 160), 6)
    for i in range(8):  # lane markings, wider towards the camera
        y = horizon + int((height - horizon) * (i + 0.5) / 8)
        half = int(3 + 14 * (y - horizon) / (height - horizon))
        cv2.rectangle(
            img, (width // 2 - half, y), (width // 2 + half, y + 2 * half + 4), (235,) * 3, -1
        )
    for _ in range(int(rng.integers(3, 9))):  # vehicles: body, windows, wheels, plate
        cw = int(rng.integers(140, 420))
        ch = int(cw * rng.uniform(0.45, 0.6))
        cx, cy = int(rng.integers(-cw // 2, width)), int(rng.integers(horizon + 10, height))
        cv2.rectangle(
            img, (cx, cy - ch), (cx + cw, cy), tuple(rng.uniform(20, 240, 3).tolist()), -1
        )
        cv2.rectangle(
            img, (cx + cw // 6, cy - ch + 8), (cx + 5 * cw // 6, cy - ch // 2), (40, 50, 60), -1
        )
        for wheel in (cx + cw // 5, cx + 4 * cw // 5):
            cv2.circle(img, (wheel, cy), ch // 5, (25, 25, 25), -1)
        plate = (cx + cw // 2 - 30, cy - ch // 4)
        cv2.rectangle(img, plate, (plate[0] + 60, plate[1] + 14), (235, 235, 235), -1)
    for _ in range(int(rng.integers(2, 7))):  # poles
        px = int(rng.integers(0, width))
        y0 = int(horizon * rng.uniform(0.2, 0.6))
        cv2.line(img, (px, y0), (px, horizon + 20), (60, 60, 60), int(rng.integers(4, 10)))
    img = cv2.GaussianBlur(img, (0, 0), 0.8)  # optics and demosaicing: no 1-pixel edges
    img += rng.standard_normal(img.shape, dtype=np.float32) * noise
    return np.clip(img, 0, 255).astype(np.uint8)


def prepare(folder: Path, count: int, quality: int, noise: float) -> list[Path]:
    """The benchmark images as a raw store (images/ + manifest.jsonl), made once per settings."""
    settings = {
        "count": count,
        "width": WIDTH,
        "height": HEIGHT,
        "quality": quality,
        "noise": noise,
        "generator": GENERATOR_VERSION,
    }
    stamp = folder / "bench.json"
    paths = [folder / "images" / f"{i:05d}.jpg" for i in range(count)]
    cached = stamp.exists() and json.loads(stamp.read_text()) == settings
    if cached and all(p.exists() for p in paths):
        return paths
    started = time.perf_counter()
    (folder / "images").mkdir(parents=True, exist_ok=True)

    def make(i: int) -> ManifestRecord:
        buf = io.BytesIO()
        Image.fromarray(street_scene(i, WIDTH, HEIGHT, noise)).save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        paths[i].write_bytes(data)
        return ManifestRecord(
            sha256=hashlib.sha256(data).hexdigest(),
            path=f"images/{paths[i].name}",
            source="benchmark",
            source_path=str(paths[i]),
            session="bench",
            width=WIDTH,
            height=HEIGHT,
            format="JPEG",
            bit_depth=8,
            channels=3,
            size=len(data),
            source_version="0",
            collected_at="2026-11-22T00:00:00Z",
            delete_after="2027-05-21T00:00:00Z",
        )

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        records = list(pool.map(make, range(count)))
    write_manifest(folder / "manifest.jsonl", records)
    stamp.write_text(json.dumps(settings))
    print(f"generated {count} images in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return paths


def baseline_scores(path: Path) -> tuple[float, float, float, int]:
    """The straightforward way: full decode to luminance, every measure at full resolution."""
    with Image.open(path) as img:
        luma = np.asarray(img.convert("L"))
    mean, overexposed, sharpness = luma_scores(luma)
    return mean, overexposed, sharpness, phash(luma)


def timed(fn: Callable[..., object], *args: object) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of fn(*args)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="images (default 500)")
    parser.add_argument("--dir", type=Path, help="where to cache the images (default: temp dir)")
    parser.add_argument(
        "--work-size", type=int, help="review.work_size (default: conf/review/default.yaml)"
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    parser.add_argument("--noise", type=float, default=3.0, help="sensor noise, 8-bit std (3)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    # The configured review defaults, on one worker; --work-size tries another working size.
    defaults = yaml.safe_load((REPO / "conf" / "review" / "default.yaml").read_text())
    cfg = ReviewConfig(**{**defaults, "workers": 1})
    if args.work_size:
        cfg = cfg.model_copy(update={"work_size": args.work_size})
    args.work_size = cfg.work_size

    folder = args.dir or Path(tempfile.gettempdir()) / (
        f"anonlab-review-bench-{WIDTH}x{HEIGHT}-q{args.quality}-n{args.noise:g}-{args.count}"
    )
    paths = prepare(folder, args.count, args.quality, args.noise)
    sizes = [p.stat().st_size for p in paths]
    for p in paths:  # both paths read from the page cache, not the disk
        p.read_bytes()

    cpu = sorted(os.sched_getaffinity(0))[0] if hasattr(os, "sched_setaffinity") else None
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

    with Image.open(paths[0]) as probe:
        probe.draft("L", draft_size(WIDTH, HEIGHT, args.work_size))
        scale = WIDTH // probe.size[0]

    def ours(path: Path) -> ImageScores:
        return score_image(path, cfg.work_size)

    def decode_floor(path: Path) -> None:
        """libjpeg alone at its cheapest (1/8 scale, luma only): what no scoring can beat."""
        with Image.open(path) as img:
            img.draft("L", (WIDTH // 8, HEIGHT // 8))
            img.load()

    methods = {"a": ours, "b": baseline_scores, "floor": decode_floor}
    wall = {m: [] for m in methods}  # per round
    cpu_s = {m: [] for m in methods}
    out_of: dict[str, list] = {m: [None] * len(paths) for m in methods}
    stage_s: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            round_wall = dict.fromkeys(methods, 0.0)
            round_cpu = dict.fromkeys(methods, 0.0)
            # Chunks of CHUNK images, each method in turn, the order rotating: load from other
            # processes weighs on all alike, and each runs warm, as it would alone.
            for start in range(0, len(paths), CHUNK):
                turn = start // CHUNK % len(methods)
                order = [*methods][turn:] + [*methods][:turn]
                for m in order:
                    for k in range(start, min(start + CHUNK, len(paths))):
                        w, c, out_of[m][k] = timed(methods[m], paths[k])
                        round_wall[m] += w
                        round_cpu[m] += c
            for m in methods:
                wall[m].append(round_wall[m])
                cpu_s[m].append(round_cpu[m])
            w, _, report = timed(run_review, cfg, folder, Path(out) / "reviewed")
            stage_s.append(w)
    assert report.kept == len(paths), "the benchmark images should all pass review"

    n = len(paths)
    rate = {m: n / statistics.median(v) for m, v in {**wall, "c": stage_s}.items()}
    ms = {m: 1000 * statistics.median(v) / n for m, v in cpu_s.items()}
    fast, base = out_of["a"], out_of["b"]
    results = {
        "images": n,
        "size": f"{WIDTH}x{HEIGHT}",
        "jpeg_quality": args.quality,
        "mean_file_kb": round(statistics.mean(sizes) / 1000, 1),
        "work_size": args.work_size,
        "jpeg_scale": f"1/{scale}",
        "rounds": args.rounds,
        "pinned_cpu": cpu,
        "a_reduced_img_per_s": round(rate["a"], 1),
        "b_baseline_img_per_s": round(rate["b"], 1),
        "c_run_review_img_per_s": round(rate["c"], 1),
        "decode_floor_img_per_s": round(rate["floor"], 1),
        "speedup": round(rate["a"] / rate["b"], 2),
        "a_cpu_ms_per_img": round(ms["a"], 2),
        "b_cpu_ms_per_img": round(ms["b"], 2),
        "decode_floor_cpu_ms_per_img": round(ms["floor"], 2),
        "max_mean_luminance_diff": round(
            max(abs(f.mean - b[0]) for f, b in zip(fast, base, strict=True)), 4
        ),
        "median_phash_distance": statistics.median(
            hamming(f.phash, b[3]) for f, b in zip(fast, base, strict=True)
        ),
    }
    results["speedup_target_met"] = results["speedup"] >= TARGET_SPEEDUP
    results["rate_target_met"] = results["a_reduced_img_per_s"] >= TARGET_RATE
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    met = {True: "met", False: "MISSED"}
    print(
        f"review throughput: {n} JPEG {WIDTH}x{HEIGHT} q{args.quality}, mean "
        f"{results['mean_file_kb']} KB, in {folder}\n"
        f"one core (CPU {cpu}), 1 thread per library; work_size {args.work_size} "
        f"(JPEG decoded at 1/{scale}); median of {args.rounds} rounds\n"
        f"  (a) reduced decode + scores + pHash   {rate['a']:8.1f} img/s  "
        f"{ms['a']:6.2f} ms CPU/img\n"
        f"  (b) full-decode baseline              {rate['b']:8.1f} img/s  "
        f"{ms['b']:6.2f} ms CPU/img\n"
        f"  speed-up (a)/(b)                      {results['speedup']:8.2f}x\n"
        f"  (c) whole run_review, workers=1       {rate['c']:8.1f} img/s\n"
        f"  floor: JPEG decode alone, 1/8, luma   {rate['floor']:8.1f} img/s  "
        f"{ms['floor']:6.2f} ms CPU/img\n"
        f"agreement (a) vs (b): mean luminance |diff| <= {results['max_mean_luminance_diff']}, "
        f"median pHash distance {results['median_phash_distance']}\n"
        f"targets: >= {TARGET_SPEEDUP:g}x {met[results['speedup_target_met']]}, "
        f">= {TARGET_RATE:g} img/s {met[results['rate_target_met']]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
