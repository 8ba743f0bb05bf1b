"""The training loop: one model from `models.<name>`, on the prepared train split.

`run_train(setup, validator)` trains `setup.name` until `train.max_steps`, calling `validator`
(training.validator) every `train.val_every` steps, at the end, and before the first step (the
untrained model's numbers, to compare against), and writes `artifacts/models/<name>/`:

- `checkpoints/last.pt` every `train.checkpoint_every` steps, at the end, on SIGTERM/SIGINT and
  before stopping on a non-finite loss; `checkpoints/best.pt` at the best validation;
- `weights.safetensors` (the best checkpoint's weights) and `config.yaml`: what evaluation,
  export and MLflow's model loader read;
- `metrics.json`: the best, final and untrained validations' records, and `headline.json` (DVC
  metrics: their few numbers, `data.headline`);
- `curves/loss.json` and `curves/val.json` (DVC plots: the loss and the validation score per
  step).

Decisions worth knowing:
- The best checkpoint is the validation with the highest score (ties: the higher tie-break,
  then the earlier step). The loop does not define the score: its caller's validator does
  (`anonlab train` hands it the release scorer's, `evaluation.training_validator`), so what
  picks the release candidate is what the release gate measures.
- Validation runs on rank 0 only, inside `torch.random.fork_rng`, so it never changes the
  random stream training draws from: a run validated more or less often trains identically.
- Resume (`train.resume=true`) restores model, optimizer, scheduler, scaler, every process's RNG
  and the step; the data stream is a function of (seed, step) (`training.sampling`), so the
  resumed run sees exactly the batches the uninterrupted one would have.
- Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (NCCL on GPUs, gloo on CPUs;
  training.distributed sets each process's GPU before the first collective and builds every
  collective's tensor on it); only rank 0 logs, tracks and writes. A stop request or a
  non-finite loss on any rank stops every rank at the same step.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import yaml
from torch.utils.data import DataLoader

from data.atomic import write_json, write_text
from data.config import TaxonomyConfig
from data.errors import AnonlabError
from data.headline import train_headline
from data.retention import refuse_overdue_datasets
from data.stage_paths import StagePaths
from serving.runtime.progress import bar
from training.augment import build_augmenter
from training.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from training.config import AugmentConfig, ModelConfig, TrainConfig
from training.dataset import CocoDetection, aspect_ratio_groups, collate, images_to_float
from training.device import resolve_device, resolve_precision
from training.distributed import Dist, all_ranks, any_rank, init_distributed, local_rank
from training.models import build_model, model_files_config, save_weights
from training.optimizer import build_optimizer, lr_factor
from training.sampling import BatchPlan, SeededSamples, StepBatches
from training.stop import StopRequest, ignore_sigint, signal_name
from training.tracking import Tracker, flatten, run_tags
from training.tracking_ui import run_name
from training.validator import Validator, better

__all__ = ["TrainResult", "TrainSetup", "TrainingDiverged", "TrainingInterrupted", "run_train"]

log = logging.getLogger(__name__)

# Keys that may differ between a checkpoint and the resuming config without changing the maths.
_RESUME_FREE = {"resume", "workers", "device", "val_every", "checkpoint_every", "log_every"}


class TrainingInterrupted(AnonlabError):
    """SIGTERM or SIGINT: a checkpoint was written; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(AnonlabError):
    """A loss became NaN or infinite; the checkpoint holds the weights from before that step."""


@dataclass
class TrainResult:
    """What a run did. best, untrained and final are validations' records
    (`training.validator.Validation.record()`, with their `step`): the best one after step 0,
    the one before the first step, the last one."""

    model: str
    steps: int
    out_dir: Path
    best: dict[str, Any] = field(default_factory=dict)
    untrained: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSetup:
    """What one training run reads: the model's section and the ones the loop needs."""

    name: str
    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig
    taxonomy: TaxonomyConfig
    seed: int
    artifacts: Path  # the artifacts root: reads prepared/, writes models/<name>/
    root: Path  # the project root (git, dvc.lock, the default MLflow database)

    @classmethod
    def of(cls, params: Any, name: str, *, artifacts: Path, root: Path) -> TrainSetup:
        """The setup for model `name` from validated params (serving.params.Params)."""
        return cls(
            name=name,
            model=params.models[name],
            train=params.train,
            augment=params.augment,
            taxonomy=params.taxonomy,
            seed=params.seed,
            artifacts=artifacts,
            root=root,
        )


def run_train(setup: TrainSetup, validator: Validator) -> TrainResult:
    """Train `setup.model` with `setup.train`, validated by `validator`; see the module doc.
    Refuses (AnonlabError, before any work) when train.json or val.json holds an image past its
    `delete_after` (data.retention)."""
    prepared = StagePaths(setup.artifacts).prepared
    refuse_overdue_datasets([prepared.train, prepared.val], command="anonlab train")
    device = resolve_device(setup.train.device, key="train.device", local_rank=local_rank())
    started_here = not torch_dist.is_initialized()
    dist = init_distributed(device)
    try:
        return _Trainer(setup, dist, validator).run()
    finally:
        if started_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


class _Trainer:
    def __init__(self, setup: TrainSetup, dist: Dist, validator: Validator) -> None:
        self.setup = setup
        self.name = setup.name
        self.dist = dist
        self.validator = validator
        self.cfg = setup.train
        self.model_cfg = setup.model
        self.files = StagePaths(setup.artifacts).model(setup.name)
        self.out = self.files.folder
        self.device = dist.device
        self.autocast_dtype = resolve_precision(self.cfg.precision, self.device)
        self.history: dict[str, list[dict[str, Any]]] = {"loss": [], "val": []}
        self.best: dict[str, Any] = {}
        self.untrained: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self.run_id: str | None = None

    # -- set-up ---------------------------------------------------------------------------

    def _config_record(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model": self.model_cfg.model_dump(),
            "train": self.cfg.model_dump(),
            "augment": self.setup.augment.model_dump(),
            "taxonomy": self.setup.taxonomy.model_dump(),
            "seed": self.setup.seed,
        }

    def _train_set(self) -> CocoDetection:
        train_file = StagePaths(self.setup.artifacts).prepared.train
        taxonomy = self.setup.taxonomy
        keypoints = self.model_cfg.kind == "keypointrcnn"
        augmenter = build_augmenter(
            self.setup.augment.transforms,
            keypoint_names=taxonomy.keypoints,
            min_visibility=self.setup.augment.min_visibility,
            where="augment.transforms",
        )
        common = {
            "classes": taxonomy.classes,
            "keypoint_names": taxonomy.keypoints,
            "keypoints": keypoints,
            "model_classes": self.model_cfg.classes,
        }
        train = CocoDetection(train_file, augmenter=augmenter, **common)
        if len(train) == 0:
            raise AnonlabError(f"{train_file} has no images; run prepare")
        return train

    def _seed(self) -> None:
        import random

        import numpy as np

        random.seed(self.setup.seed)
        np.random.seed(self.setup.seed % 2**32)
        torch.manual_seed(self.setup.seed)
        if self.cfg.deterministic:
            # CUDA has no deterministic kernels for some detection ops (roi_align backward):
            # there it warns instead of failing; on the CPU a seeded run repeats bit for bit.
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._seed()
        train_set = self._train_set()
        model = build_model(self.model_cfg, keypoint_names=self._keypoint_names())
        model.to(self.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.cfg, trainable)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.cfg.schedule, self.cfg.max_steps)
        )
        scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )
        step = 0
        last = self.files.checkpoint("last")
        if self.cfg.resume:
            if last.exists():
                step = self._restore(last, model, optimizer, scheduler, scaler)
            else:
                log.warning("train.resume=true but %s does not exist: starting at step 0", last)
        if step >= self.cfg.max_steps:
            raise AnonlabError(
                f"{last} is at step {step}, train.max_steps is {self.cfg.max_steps}: nothing to "
                "do; raise train.max_steps to train longer, or resume=false to start over"
            )
        self.model = model
        self.trainable = trainable
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        net: torch.nn.Module = model
        if self.dist.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        plan = BatchPlan(
            aspect_ratio_groups(train_set),
            self.cfg.batch_size,
            seed=self.setup.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        loader = DataLoader(
            SeededSamples(train_set),
            batch_sampler=StepBatches(plan, start_step=step),
            num_workers=self.cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_sigint if self.cfg.workers else None,
            persistent_workers=self.cfg.workers > 0,
            # Its own generator: starting an iterator would otherwise draw from the global RNG,
            # which a resumed run restored, and shift every random draw after it.
            generator=torch.Generator().manual_seed(self.setup.seed),
        )
        tags = {**run_tags(self.setup.root, stage="train"), "anonlab.model": self.name}
        tracker = Tracker(
            self.setup.root,
            experiment="anonlab/train",
            run_name=run_name(self.name, "train", tags),
            params=flatten(self._config_record()),
            tags=tags,
            enabled=self.dist.main,
            resume_run_id=self.run_id,
        )
        with tracker, StopRequest() as stop:
            self.tracker = tracker
            self.run_id = tracker.run_id
            if step == 0:
                self.untrained = {"step": 0, **self._validate(0)}
            self._loop(net, iter(loader), step, stop)
            return self._finish()

    def _loop(self, net: torch.nn.Module, batches: Iterator[Any], step: int, stop: Any) -> None:
        cfg = self.cfg
        progress = bar(total=cfg.max_steps, desc=f"train {self.name}", unit="step")
        progress.n = progress.last_print_n = step
        progress.disable = progress.disable or not self.dist.main
        rate = None
        tick = time.perf_counter()
        net.train()
        with progress:
            while step < cfg.max_steps:
                images, targets = next(batches)
                images = images_to_float(images, self.device)
                targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
                autocast = (
                    torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None
                    else nullcontext()
                )
                with autocast:
                    losses = net(images, targets)
                total = sum(losses.values())
                if not self._all_finite(total):
                    self._diverged(step, losses)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                if cfg.clip_grad_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                step += 1

                now = time.perf_counter()
                seen = len(images) * self.dist.world_size / max(now - tick, 1e-9)
                rate = seen if rate is None else 0.9 * rate + 0.1 * seen
                tick = now
                progress.update(1)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    self._log_step(step, total, losses, rate, progress)
                if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.max_steps:
                    self._validate(step)
                    net.train()
                stopping = self._stop_requested(stop)
                due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                if due or stopping or step == cfg.max_steps:
                    self._save("last", step)
                if stopping:
                    signum = stop.signum or signal.SIGTERM
                    raise TrainingInterrupted(
                        f"{signal_name(signum)}: stopped after step {step}/{cfg.max_steps}; "
                        f"checkpoint written to {self.files.checkpoint('last')}. "
                        "Continue with `anonlab train resume=true` (same config).",
                        signum,
                    )
        self.steps = step

    # -- per step -------------------------------------------------------------------------

    def _all_finite(self, total: torch.Tensor) -> bool:
        return all_ranks(torch.isfinite(total.detach()), self.dist)

    def _stop_requested(self, stop: StopRequest) -> bool:
        return any_rank(stop.signum is not None, self.dist)

    def _diverged(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
        # Nothing was updated by this step yet: the checkpoint holds the last good weights.
        self._save("last", step)
        where = f"on another process (rank != {self.dist.rank})" if not bad else ""
        components = ", ".join(f"{k} = {v}" for k, v in bad.items()) or where
        self.tracker.log_metrics({"train/diverged": 1.0}, step + 1)
        raise TrainingDiverged(
            f"step {step + 1}: non-finite loss ({components}); the weights before this step are "
            f"in {self.files.checkpoint('last')}. Lower train.optimizer.lr, lengthen "
            "train.schedule.warmup_steps or set train.clip_grad_norm, then resume=true"
        )

    def _log_step(
        self,
        step: int,
        total: torch.Tensor,
        losses: dict[str, torch.Tensor],
        rate: float | None,
        progress: Any,
    ) -> None:
        values = {k: float(v.detach()) for k, v in losses.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"step": step, "loss": float(total.detach()), "lr": lr, **values}
        self.history["loss"].append(row)
        metrics = {f"train/{k}": v for k, v in values.items()}
        metrics.update({"train/loss": row["loss"], "train/lr": lr})
        if rate is not None:
            metrics["train/images_per_s"] = rate
        self.tracker.log_metrics(metrics, step)
        progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{rate or 0:.1f}")
        if progress.disable and self.dist.main:
            log.info(
                "%s step %d/%d loss %.4f lr %.2e %.1f img/s",
                self.name,
                step,
                self.cfg.max_steps,
                row["loss"],
                lr,
                rate or 0.0,
            )

    # -- validation -----------------------------------------------------------------------

    def _validate(self, step: int) -> dict[str, Any]:
        """Run the validator on rank 0 (the others wait); log it, and keep `best` when it is."""
        record: dict[str, Any] = {}
        if self.dist.main:
            devices = [self.device] if self.device.type == "cuda" else []
            self.model.eval()
            with torch.random.fork_rng(devices=devices):
                validation = self.validator(self.model, step)
            record = validation.record()
            self.final = {"step": step, **record}
            metrics = {f"val/{k}": float(v) for k, v in validation.metrics.items()}
            self.tracker.log_metrics({**metrics, "val/score": validation.score}, step)
            self.history["val"].append({"step": step, "score": validation.score})
            log.info("%s step %d: val score %.4f", self.name, step, validation.score)
            if step > 0 and better(record, self.best):
                self.best = {"step": step, **record}
                self._save("best", step, gather_rng=False)
                save_weights(self.model, self.files.weights)
        if self.dist.world_size > 1:
            torch_dist.barrier()
        return record

    # -- checkpoints and outputs ------------------------------------------------------------

    def _save(self, which: str, step: int, *, gather_rng: bool = True) -> None:
        """Write checkpoints/<which>.pt on rank 0. With `gather_rng` every rank must call it (it
        gathers each rank's RNG state); `best` is saved by rank 0 alone, with its own."""
        states = [get_rng_state()]
        if gather_rng and self.dist.world_size > 1:
            states = [None] * self.dist.world_size
            torch_dist.all_gather_object(states, get_rng_state())
        if not self.dist.main:
            return
        save_checkpoint(
            self.files.checkpoint(which),
            {
                "step": step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": states,
                "config": self._config_record(),
                "mlflow_run_id": self.run_id,
                "best": self.best,
                "untrained": self.untrained,
                "history": self.history,
            },
        )

    def _restore(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
    ) -> int:
        checkpoint = load_checkpoint(path)
        saved = checkpoint["config"]
        current = self._config_record()
        if saved["model"] != current["model"]:
            keys = _diff(saved["model"], current["model"], f"models.{self.name}")
            raise AnonlabError(
                f"{path} was trained with another model config ({keys} differ); resume with the "
                "same config, or resume=false to start over"
            )
        changed = [
            k
            for k in _diff_keys(saved, current)
            if k.split(".")[-1] not in _RESUME_FREE and not k.startswith("train.max_steps")
        ]
        if changed:
            log.warning(
                "resuming with a config that differs from the checkpoint's in %s: the run will "
                "not repeat an uninterrupted one exactly",
                ", ".join(changed),
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint["rng"]
        set_rng_state(states[self.dist.rank] if len(states) > self.dist.rank else states[0])
        self.run_id = checkpoint.get("mlflow_run_id")
        self.best = checkpoint.get("best", {})
        self.untrained = checkpoint.get("untrained", {})
        self.history = checkpoint.get("history", {"loss": [], "val": []})
        step = int(checkpoint["step"])
        log.info("%s: resumed from %s at step %d", self.name, path, step)
        return step

    def _finish(self) -> TrainResult:
        result = TrainResult(
            self.name,
            self.steps,
            self.out,
            best=self.best,
            untrained=self.untrained,
            final=self.final,
        )
        if not self.dist.main:
            return result
        config_file = self.files.config
        write_text(
            config_file,
            yaml.safe_dump(
                model_files_config(self.model_cfg, keypoint_names=self._keypoint_names()),
                sort_keys=False,
            ),
        )
        metrics = {
            "model": self.name,
            "steps": self.steps,
            "best": self.best,
            "final": self.final,
            "untrained": self.untrained,
        }
        write_json(self.files.metrics, metrics)
        write_json(self.files.headline, train_headline(metrics))
        write_json(self.files.loss_curve, self.history["loss"])
        write_json(self.files.val_curve, self.history["val"])
        self.tracker.log_artifact(self.files.metrics)
        self.tracker.log_artifact(config_file)
        version = self.tracker.log_model(
            weights=self.files.weights,
            config=config_file,
            registered_name=self.name,
            metadata={"best_step": self.best.get("step"), "kind": self.model_cfg.kind},
        )
        log.info(
            "%s: %d steps; best val score %s at step %s (untrained %s); weights in %s%s",
            self.name,
            self.steps,
            _fmt(self.best.get("score")),
            self.best.get("step"),
            _fmt(self.untrained.get("score")),
            self.files.weights,
            f"; registered as {self.name} version {version}" if version else "",
        )
        return result

    def _keypoint_names(self) -> Sequence[str]:
        # Only Keypoint R-CNN predicts keypoints; its names travel in config.yaml.
        return self.setup.taxonomy.keypoints if self.model_cfg.kind == "keypointrcnn" else []


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    # The same dotted flattening the config is logged to MLflow with.
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str) -> str:
    return ", ".join(f"{prefix}.{k}" for k in _diff_keys(a, b)) or "?"
