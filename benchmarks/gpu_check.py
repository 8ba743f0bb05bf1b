"""The GPU checks of training and the runtime, for a machine with NVIDIA GPUs (CI never runs it).

    .venv/bin/python benchmarks/gpu_check.py [--steps 200] [--warmup 20] [--size 1024]
        [--gpus N] [--dir DIR] [--json]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --steps 2 --warmup 2 --size 128
        (the same steps on the CPU, small: checks the script itself, not the numbers)

Without a CUDA GPU (and without --device cpu) it exits with status 2 and says so. Otherwise, on
the synthetic pipeline's prepared data (made once under --dir, not timed), with the production
detector `maskrcnn_r50_fpn` at `--size` px from random weights (`weights=none`: the machine
needs no download):

1. one process: `benchmarks/train_step.py`, anonlab's training loop beside a bare torchvision
   loop, in bf16 autocast and in fp32: images/s of each over steps warmup+1 .. warmup+steps;
2. every GPU under `torchrun --nproc-per-node=N ... anonlab train` (DDP over NCCL, the
   finiteness and stop agreements every step on the GPUs), bf16: images/s of all processes
   together over the same steps, from the timestamps of the losses rank 0 logs to MLflow; the
   run must end with weights written (it proves the collectives work, not only their speed);
3. the runtime's torch detector (`TorchDetector`, the backend `anonlab blur --backend torch`
   runs) on a generated 8000x4000 panorama with the model's tiling, one window per call on the
   calling thread (unbatched) and 8 per call streamed (batched, fp32 and bf16 autocast):
   seconds per panorama, windows/s, MP/s, and GPU-hours per million such panoramas.

Results print as a table (or JSON) to paste into BENCHMARKS.md with the GPU's name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "maskrcnn_r50_fpn"
PANORAMA = (4000, 8000)  # height, width


def _model_overrides(size: int) -> list[str]:
    return [
        f"models.{MODEL}.weights=none",
        f"models.{MODEL}.min_size={size}",
        f"models.{MODEL}.max_size={size}",
    ]


def single_process(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """benchmarks/train_step.py's result for one precision."""
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "train_step.py"),
        f"--model={MODEL}",
        "--weights=none",
        f"--min-size={args.size}",
        f"--max-size={args.size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--log-every={args.log_every}",
        "--rounds=1",
        f"--device={args.device}",
        f"--precision={precision}",
        f"--dir={args.dir}",
        "--json",
    ]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout[done.stdout.index("{") :])


def distributed(args: argparse.Namespace) -> dict[str, Any]:
    """`anonlab train` under torchrun on `args.gpus` processes; global images/s."""
    from mlflow.tracking import MlflowClient

    data = Path(args.dir)
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        work = Path(tmp)
        shutil.copy(data / "params.yaml", work / "params.yaml")
        (work / "artifacts").mkdir()
        for name in ("prepared", "raw"):
            (work / "artifacts" / name).symlink_to(data / "artifacts" / name)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        anonlab = str(Path(sys.executable).parent / "anonlab")
        torchrun = str(Path(sys.executable).parent / "torchrun")
        overrides = [
            f"train.max_steps={args.warmup + args.steps}",
            "train.val_every=0",
            "train.checkpoint_every=0",
            f"train.log_every={args.log_every}",
            f"train.device={args.device}",
            "train.precision=bf16" if args.device != "cpu" else "train.precision=fp32",
            "train.workers=4",
        ]
        argv = [torchrun, f"--nproc-per-node={args.gpus}", "--no-python", anonlab]
        argv += ["--params", str(work / "params.yaml"), "train", "--model", MODEL, *overrides]
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVC_NO_ANALYTICS": "1"}
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(
                f"torchrun failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n"
                f"{done.stderr[-4000:]}"
            )
        weights = work / "artifacts" / "models" / MODEL / "weights.safetensors"
        client = MlflowClient(uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "anonlab/train"]
        (run,) = client.search_runs([experiment.experiment_id])
        batch = _batch_size(work)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        at = {m.step: m.timestamp for m in history}
        end = args.warmup + args.steps
        seconds = (at[end] - at[args.warmup]) / 1000
        return {
            "processes": args.gpus,
            "precision": "bf16" if args.device != "cpu" else "fp32",
            "images_per_s": args.steps * batch * args.gpus / seconds,
            "batch_per_process": batch,
            "weights_written": weights.is_file(),
            "wall_s": wall,
        }


def _batch_size(work: Path) -> int:
    from serving.params import load_project

    return load_project(work / "params.yaml").params.train.batch_size


def runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime's torch detector over one generated panorama: s/panorama, windows/s."""
    import numpy as np
    import torch

    from evaluation.evaluate import tiling_spec
    from serving.params import load_project
    from serving.runtime.architecture import DetectorCore
    from serving.runtime.backends import InputSize, TorchDetector
    from serving.runtime.tiles import detect_tiled, plan_windows
    from training.models import build_model

    params = load_project(Path(args.dir) / "params.yaml").params
    config = params.models[MODEL]
    torch.manual_seed(0)
    model = build_model(config, keypoint_names=[])
    spec = tiling_spec(params.evaluate)
    core = DetectorCore(model, score_threshold=params.evaluate.min_threshold, keypoints=False)
    size = InputSize.of(config.min_size, config.max_size, spec.tile)

    def detector(batch: int, precision: str) -> Any:
        return TorchDetector(
            core,
            size=size,
            mask_threshold=params.evaluate.mask_threshold,
            device=torch.device(args.device),
            batch=batch,
            precision=precision,
        )

    one = detector(1, "fp32")
    settings = {
        # A plain callable: one window per call, everything on this thread.
        "unbatched fp32": lambda tiles: [one(tiles[i : i + 1])[0] for i in range(len(tiles))],
        "batch 8 fp32": detector(8, "fp32"),
        "batch 8 bf16": detector(8, "bf16"),
    }
    rng = np.random.default_rng(0)
    height, width = PANORAMA if args.device != "cpu" else (512, 1024)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    windows = len(plan_windows(width, height, spec))
    out: dict[str, Any] = {"image": f"{width}x{height}", "windows": windows}
    for name, found in settings.items():
        detect_tiled(image, found, spec)  # warm-up: kernels, allocator
        rounds = 3
        started = time.perf_counter()
        for _ in range(rounds):
            detect_tiled(image, found, spec)
        if args.device != "cpu":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / rounds
        out[name] = {
            "s_per_image": seconds,
            "windows_per_s": windows / seconds,
            "mp_per_s": width * height / 1e6 / seconds,
            "gpu_hours_per_million": seconds * 1e6 / 3600,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="the model's min and max size")
    parser.add_argument("--gpus", type=int, help="processes under torchrun (default: all GPUs)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to dry-run")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "anonlab-gpu-check"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on "
            "a GPU machine, or pass --device cpu to dry-run the script",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.warmup % args.log_every or args.steps % args.log_every:
        args.log_every = 1
    args.gpus = args.gpus or (torch.cuda.device_count() if args.device != "cpu" else 2)
    gpu = torch.cuda.get_device_name(0) if args.device != "cpu" else "none (dry run on the CPU)"
    results: dict[str, Any] = {"gpu": gpu, "model": MODEL, "size": args.size}

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_step import prepare_data

    prepare_data(Path(args.dir), MODEL, _model_overrides(args.size))
    precisions = ("bf16", "fp32") if args.device != "cpu" else ("fp32",)
    for precision in precisions:
        results[f"single_{precision}"] = single_process(args, precision)
        print(f"single process, {precision}: {results[f'single_{precision}']}", file=sys.stderr)
    results["ddp"] = distributed(args)
    print(f"torchrun: {results['ddp']}", file=sys.stderr)
    results["runtime"] = runtime(args)
    print(f"runtime: {results['runtime']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    one = {p: results[f"single_{p}"]["images_per_s"] for p in precisions}
    print(f"GPU: {gpu}; {MODEL} at {args.size} px, random weights, {args.steps} timed steps")
    print(f"{'run':<28}{'anonlab img/s':>15}{'bare img/s':>12}")
    for precision, r in one.items():
        print(f"{'one process, ' + precision:<28}{r['anonlab']:>15.2f}{r['bare']:>12.2f}")
    ddp = results["ddp"]
    label = f"torchrun x{ddp['processes']}, {ddp['precision']}"
    print(f"{label:<28}{ddp['images_per_s']:>15.2f}{'':>12}  weights: {ddp['weights_written']}")
    rt = results["runtime"]
    print(f"runtime (torch) on a {rt['image']} panorama, {rt['windows']} windows:")
    for name, r in rt.items():
        if isinstance(r, dict):
            print(
                f"  {name:<16}{r['s_per_image']:8.2f} s{r['windows_per_s']:8.1f} windows/s"
                f"{r['mp_per_s']:8.1f} MP/s{r['gpu_hours_per_million']:10.0f} GPU-h per 1M"
            )


if __name__ == "__main__":
    main()
