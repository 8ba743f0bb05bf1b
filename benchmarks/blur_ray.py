"""The Ray engine against the local engine: `anonlab blur` on the same images, same model.

    .venv/bin/python benchmarks/blur_ray.py [--images 200] [--size 640x480] [--rounds 2]
        [--model DIR] [--dir DIR] [--json]

Generates (once, cached; not timed) `--images` street-like JPEGs of `--size`
(benchmarks/blur_speed.py's generator, drawn at 4x and scaled down) and, without `--model`,
exports the tests' tiny random-weight Mask R-CNN into the folder (not timed). Then runs, as a
user would, each engine as its own `anonlab blur` process over the folder into a fresh output
folder, taking turns round by round so that other load weighs on both alike:

  (a) `--engine local` (its defaults: `--workers 2` threads decoding and encoding beside
      inference, onnxruntime on every core);
  (b) `--engine ray`: a local Ray cluster started by the command on this machine's CPUs (at
      least 2), `--actors` one per CPU but one by default, or `--actors N` given here.

Figures: wall seconds of the whole command (start, model loading, the Ray cluster's start and
stop for (b), every image, the ledger), the median over the rounds, and images/s. Target (from
the issue): the Ray engine's overhead, (b) / (a) - 1, at most 15% at 2 CPUs. Both commands must
succeed with every image anonymized, or the benchmark stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.blur_speed import panorama  # noqa: E402

TARGET = 0.15


def prepare(folder: Path, images: int, size: tuple[int, int], model: Path | None) -> Path:
    """The images under folder/images (made once), and the model folder."""
    pictures = folder / "images"
    if len(list(pictures.glob("*.jpg"))) != images:
        shutil.rmtree(pictures, ignore_errors=True)
        pictures.mkdir(parents=True)
        width, height = size
        for n in range(images):
            # drawn at 4x (its street furniture has a size for panoramas), then scaled down
            rgb = cv2.resize(panorama(n, 4 * width, 4 * height), size, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok
            (pictures / f"frame-{n:05d}.jpg").write_bytes(buf.tobytes())
    if model is not None:
        return model
    made = folder / "model.txt"  # where the exported artifact is
    if not made.is_file() or not Path(made.read_text()).is_dir():
        from tests.serving.artifacts import tiny_artifact

        shutil.rmtree(folder / "model", ignore_errors=True)
        (folder / "model").mkdir()
        made.write_text(str(tiny_artifact(folder / "model")))
    return Path(made.read_text())


def run(engine: str, folder: Path, model: Path, extra: list[str]) -> float:
    """Wall seconds of one `anonlab blur --engine <engine>` over the images."""
    out = folder / f"out-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "serving.cli", "blur", str(folder / "images"), "--model",
            str(model), "--out", str(out), "--engine", engine, *extra]  # fmt: skip
    # The generator's one-thread settings are not the commands': each runs as a user runs it.
    threads = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in threads and k != "RAY_ADDRESS"}
    env["ANONLAB_PROGRESS"] = "0"
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{engine}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images (default 200)")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, median (default 2)")
    parser.add_argument("--actors", type=int, help="--actors of the Ray engine (default: its own)")
    parser.add_argument("--model", type=Path, help="artifact folder (default: the tiny model)")
    parser.add_argument("--dir", type=Path, help="where to cache the images (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    folder = args.dir or Path(tempfile.gettempdir()) / f"anonlab-blur-ray-{args.images}-{args.size}"
    model = prepare(folder, args.images, (width, height), args.model)
    ray_extra = ["--actors", str(args.actors)] if args.actors else []

    times: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.rounds):
        times["local"].append(run("local", folder, model, []))
        times["ray"].append(run("ray", folder, model, ray_extra))
    local, ray = (statistics.median(times[k]) for k in ("local", "ray"))
    results = {
        "images": args.images,
        "size": args.size,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "local_s": local,
        "ray_s": ray,
        "local_images_per_s": args.images / local,
        "ray_images_per_s": args.images / ray,
        "overhead": ray / local - 1,
        "target": TARGET,
        "meets_target": ray / local - 1 <= TARGET,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.images} images of {args.size}, {os.cpu_count()} CPUs, median of {args.rounds}")
    print(f"  (a) --engine local  {local:7.1f} s  {args.images / local:6.2f} images/s")
    print(f"  (b) --engine ray    {ray:7.1f} s  {args.images / ray:6.2f} images/s")
    verdict = "meets" if results["meets_target"] else "MISSES"
    print(f"  overhead (b)/(a) - 1: {ray / local - 1:+.1%} (target <= {TARGET:.0%}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
