"""The audit against the anonymization it checks, on 8000x4000 panoramas, one core.

    .venv/bin/python benchmarks/audit_speed.py --model artifacts/serving/maskrcnn_mobilenet_v3_fpn-1
        [--images 2] [--rounds 1] [--dir DIR] [--json]

The panoramas are blur_speed's street-like JPEGs (generated once, cached, not timed). In one
process pinned to one CPU, one thread in OpenCV and onnxruntime, taking turns image by image:

  (a) anonymization: `Runtime.anonymize_bytes` of the file with the --model artifact (decode,
      tiled detection, anonymize, encode), its output and sidecar written (not timed);
  (b) the audit of that output: `audit.audit_image` with CenterFace (decode, tiled CenterFace
      over 640 px windows, the hidden region from the sidecar, residuals).

Reported: seconds per image of each, median over rounds, and (b) / (a). Target (the issue's):
the audit costs at most 50% of the anonymization.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blur_speed import HEIGHT, WIDTH, prepare  # noqa: E402

TARGET = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an artifact folder")
    parser.add_argument("--images", type=int, default=2, help="panoramas (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all images (1)")
    parser.add_argument("--dir", type=Path, help="where to cache the images (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    from serving.runtime.audit import audit_image
    from serving.runtime.independent.centerface import CenterFace
    from serving.runtime.pipeline import Runtime

    folder = args.dir or Path(tempfile.gettempdir()) / "anonlab-blur-bench"
    paths = prepare(folder, args.images, 90)
    cpu = None
    if hasattr(os, "sched_getaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    runtime = Runtime.load([args.model], threads=1, allow_demo=True)
    centerface = CenterFace(threads=1)
    out = Path(tempfile.mkdtemp(prefix="anonlab-audit-bench-"))
    small = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(paths[0])), (512, 256)))[1].tobytes()
    runtime.anonymize_bytes(small)  # warm-up: sessions, allocators
    rounds: list[tuple[float, float]] = []
    residuals = 0
    for _ in range(args.rounds):
        anonymize = audit = 0.0
        for path in paths:
            data = path.read_bytes()
            t0 = time.perf_counter()
            done = runtime.anonymize_bytes(data)
            anonymize += time.perf_counter() - t0
            target = out / path.name
            target.write_bytes(done.data)
            Path(f"{target}.json").write_text(json.dumps(done.report()), encoding="utf-8")
            t0 = time.perf_counter()
            found = audit_image(target, [centerface], 0.5)
            audit += time.perf_counter() - t0
            residuals += len(found or [])
        rounds.append((anonymize / len(paths), audit / len(paths)))
    a = statistics.median(r[0] for r in rounds)
    b = statistics.median(r[1] for r in rounds)
    ratio = statistics.median(r[1] / r[0] for r in rounds)
    result = {
        "images": args.images,
        "size": f"{WIDTH}x{HEIGHT}",
        "model": runtime.artifacts[0].manifest.name,
        "pinned_cpu": cpu,
        "anonymize_s": a,
        "audit_s": b,
        "ratio": ratio,
        "residuals_seen": residuals,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.images} panoramas {WIDTH}x{HEIGHT}, {result['model']}, one core, median of "
        f"{args.rounds} rounds"
    )
    print(f"  (a) anonymization (decode, detect, anonymize, encode)  {a:8.2f} s per image")
    print(f"  (b) audit (decode, CenterFace tiled, hidden region)    {b:8.2f} s per image")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"ratio (b) / (a) {ratio:.3f}; target at most {TARGET}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
