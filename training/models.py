"""Detection models from a `ModelConfig`: torchvision Mask R-CNN or Keypoint R-CNN on an FPN.

`build_model` builds the network `config` describes with the runtime's builder
(`serving.runtime.architecture`: Mask R-CNN or Keypoint R-CNN on a ResNet or MobileNetV3 FPN; the
runtime rebuilds exported models with the same code) and gives it its initial weights:

- `none`: random; nothing is downloaded.
- `imagenet`: the backbone's torchvision ImageNet weights (IMAGENET1K_V1), downloaded once.
- `coco`: torchvision's COCO detector (Mask R-CNN or Keypoint R-CNN on ResNet-50), downloaded
  once. Tensors of the same shape load as they are. The class-dependent heads are matched by
  name instead: rows of `cls_score`, `bbox_pred` (4 per class) and `mask_fcn_logits` for the
  classes COCO has (background, `person`, `vehicle` as COCO's `car`, any other COCO name) are
  COCO's, the others stay random; the keypoint predictor's channels likewise by keypoint name.
  Any other tensor whose shape differs is not loaded. Each re-shaped tensor is logged.
- a `.safetensors` path: the weights of an anonlab model of the same config (strict).

No backbone uses batch statistics: batches are 1-4 images per GPU, so they would be noise, and
they would not be synchronised across DDP processes. `norm: frozen_bn` (FrozenBatchNorm2d) keeps
a pretrained backbone's statistics; `norm: group_norm` learns GroupNorm for backbones trained from
random weights (fixed identity statistics would leave those unnormalized, and they train poorly).
The frozen statistics keep torchvision's default eps (1e-5) even for COCO weights (torchvision
sets 0 for those), so a model rebuilt by `load_model_files` computes exactly what was trained.

`save_weights` / `load_weights` write and read safetensors (no pickles); `model_files_config` is
the `config.yaml` written beside `weights.safetensors`, and `load_model_files` rebuilds a model
from those two files alone (MLflow's loader, evaluation and export use it, not params.yaml).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.models.detection import (
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
)

from data.atomic import atomic_path
from data.errors import AnonlabError, ConfigError
from serving.runtime.architecture import Architecture, build
from training.config import ModelConfig

__all__ = [
    "COCO_WEIGHTS",
    "FORMAT_VERSION",
    "architecture_of",
    "build_model",
    "load_model_files",
    "load_weights",
    "model_architecture",
    "model_files_config",
    "save_weights",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# The (kind, backbone) pairs torchvision has a COCO-trained detector for.
COCO_WEIGHTS: dict[tuple[str, str], WeightsEnum] = {
    ("maskrcnn", "resnet50"): MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    ("keypointrcnn", "resnet50"): KeypointRCNN_ResNet50_FPN_Weights.COCO_V1,
}

# Our class names that COCO calls otherwise; any other class COCO has matches by its own name.
_COCO_ALIASES = {"vehicle": "car"}

# Head tensors whose slices along dim 0 follow the class index: key -> rows per class.
_CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}
# Keypoint predictor tensors: key -> the dim that follows the keypoint index. The predictor is a
# ConvTranspose2d, whose weight is (in_channels, out_channels, kh, kw).
_KEYPOINT_DIM = {
    "roi_heads.keypoint_predictor.kps_score_lowres.weight": 1,
    "roi_heads.keypoint_predictor.kps_score_lowres.bias": 0,
}

_OFFLINE_HINT = (
    "the machine is offline or the URL is blocked; download once where there is network "
    "(the file goes to $TORCH_HOME/hub/checkpoints, here {where}) or set weights: none / "
    "a local .safetensors file"
)


def build_model(config: ModelConfig, *, keypoint_names: Sequence[str]) -> nn.Module:
    """The detection model `config` describes, with its initial weights, in train mode on the CPU.

    `keypoint_names` sets the keypoint channels of a keypointrcnn (ignored for maskrcnn).
    Bad weights choices raise ConfigError; a failed download or a missing file AnonlabError.
    """
    weights = config.weights
    if config.kind == "keypointrcnn" and not keypoint_names:
        raise ConfigError("a keypointrcnn model needs keypoint names (taxonomy.keypoints is empty)")
    if weights not in ("none", "coco", "imagenet") and not _is_path(weights):
        raise ConfigError(
            f"weights = {weights!r}: unknown; use none, imagenet, coco or the path of a "
            ".safetensors file written by anonlab"
        )
    coco: tuple[WeightsEnum, dict[str, torch.Tensor]] | None = None
    if weights == "coco":
        enum = _coco_weights(config)
        with _downloading(enum, f"weights = 'coco' for {config.kind} on {config.backbone}"):
            coco = enum, enum.get_state_dict(progress=True, check_hash=True, weights_only=True)
    model = _architecture(config, keypoint_names, imagenet=weights == "imagenet")
    if coco is not None:
        _load_coco(model, *coco, classes=config.classes, keypoint_names=keypoint_names)
    elif _is_path(weights):
        path = Path(weights)
        if not path.is_file():
            raise AnonlabError(
                f"weights = {weights!r}: file not found; give the path of a weights.safetensors "
                "written by anonlab for this model config, or set weights: none / imagenet / coco"
            )
        load_weights(model, path)
    return model


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's state dict to `path` as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "anonlab"})


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors file written by `save_weights` into `model`; every key must match."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise AnonlabError(
            f"{path}: weights file not found; train the model first or fix the path"
        ) from None
    except (SafetensorError, OSError) as exc:
        raise AnonlabError(f"{path}: not a readable safetensors file ({exc})") from None
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in ours.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {', '.join(keys[:5])}"
            + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        ]
        raise AnonlabError(
            f"{path}: these weights do not fit the model ({'; '.join(problems)}); the file was "
            "written for another model config (kind, backbone, classes or keypoints)"
        )
    model.load_state_dict(state, strict=True)


def model_files_config(config: ModelConfig, *, keypoint_names: Sequence[str]) -> dict[str, Any]:
    """What `config.yaml` beside `weights.safetensors` holds: enough to rebuild the model."""
    return {
        **config.model_dump(mode="json"),
        "keypoint_names": list(keypoint_names) if config.kind == "keypointrcnn" else [],
        "format_version": FORMAT_VERSION,
    }


def load_model_files(config_path: Path, weights_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved as `config.yaml` + `weights.safetensors`, in eval mode, and its config.

    Rebuilt with weights none, so nothing is downloaded, whatever the model started from.
    """
    config, keypoint_names, raw = _read_model_config(Path(config_path))
    model = build_model(config, keypoint_names=keypoint_names)
    load_weights(model, Path(weights_path))
    model.eval()
    return model, raw


def model_architecture(config_path: Path) -> Architecture:
    """The network a trained model's `config.yaml` describes (what export writes)."""
    config, keypoint_names, _ = _read_model_config(Path(config_path))
    return architecture_of(config, keypoint_names)


def _read_model_config(config_path: Path) -> tuple[ModelConfig, list[str], dict[str, Any]]:
    """The `ModelConfig` (weights none), keypoint names and raw content of a `config.yaml`."""
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnonlabError(
            f"{config_path}: model config not found; it is written beside weights.safetensors "
            "by training"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AnonlabError(f"{config_path}: not a readable YAML file ({exc})") from None
    if not isinstance(raw, dict) or "format_version" not in raw:
        raise AnonlabError(f"{config_path}: not a model config written by anonlab training")
    if raw["format_version"] != FORMAT_VERSION:
        raise AnonlabError(
            f"{config_path}: format_version {raw['format_version']!r}; this anonlab reads "
            f"{FORMAT_VERSION} (written by another anonlab version)"
        )
    fields = {k: v for k, v in raw.items() if k not in ("keypoint_names", "format_version")}
    try:
        config = ModelConfig.model_validate({**fields, "weights": "none"})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise AnonlabError(f"{config_path}: invalid model config ({problems})") from None
    keypoint_names = raw.get("keypoint_names") or []
    if not isinstance(keypoint_names, list):
        raise AnonlabError(f"{config_path}: keypoint_names is not a list")
    return config, [str(k) for k in keypoint_names], raw


# -- construction ------------------------------------------------------------------------------


def _is_path(weights: str) -> bool:
    return weights.endswith(".safetensors") or "/" in weights


def _coco_weights(config: ModelConfig) -> WeightsEnum:
    found = COCO_WEIGHTS.get((config.kind, config.backbone))
    if found is None:
        have = ", ".join(f"{kind} + {backbone}" for kind, backbone in COCO_WEIGHTS)
        raise ConfigError(
            f"weights = 'coco': torchvision has no COCO {config.kind} on {config.backbone}; "
            f"COCO weights exist for {have}. weights: imagenet or none work with every backbone"
        )
    return found


def architecture_of(config: ModelConfig, keypoint_names: Sequence[str]) -> Architecture:
    """The network `config` describes (the runtime's `Architecture`: what export writes)."""
    return Architecture(
        kind=config.kind,
        backbone=config.backbone,
        norm=config.norm,
        fpn_channels=config.fpn_channels,
        classes=tuple(config.classes),
        keypoint_names=tuple(keypoint_names) if config.kind == "keypointrcnn" else (),
        min_size=config.min_size,
        max_size=config.max_size,
        proposals_per_image=config.proposals_per_image,
        rois_per_image=config.rois_per_image,
        detections_per_image=config.detections_per_image,
        trainable_layers=config.trainable_layers,
    )


def _architecture(
    config: ModelConfig, keypoint_names: Sequence[str], *, imagenet: bool
) -> nn.Module:
    backbone_weights = get_model_weights(config.backbone).IMAGENET1K_V1 if imagenet else None
    with _downloading(backbone_weights, f"ImageNet weights of {config.backbone}"):
        return build(architecture_of(config, keypoint_names), backbone_weights=backbone_weights)


@contextlib.contextmanager
def _downloading(weights: WeightsEnum | None, what: str) -> Iterator[None]:
    """Turn a failed download of `weights` into an AnonlabError that says what to do."""
    try:
        yield
    except (OSError, http.client.HTTPException) as exc:
        if weights is None:
            raise
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise AnonlabError(
            f"{what} ({weights}): could not download {weights.url} ({exc}); "
            + _OFFLINE_HINT.format(where=where)
        ) from None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        if weights is None:
            raise
        # A download that failed its hash check, or a cached file cut short.
        cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        raise AnonlabError(
            f"{what} ({weights}): could not read {weights.url} ({exc}); delete {cached} if it "
            "exists and run again"
        ) from None


# -- COCO initialisation -------------------------------------------------------------------------


def _load_coco(
    model: nn.Module,
    weights: WeightsEnum,
    theirs: dict[str, torch.Tensor],
    *,
    classes: Sequence[str],
    keypoint_names: Sequence[str],
) -> None:
    """Load the COCO state dict `theirs` into `model`, class and keypoint slices by name."""
    categories = list(weights.meta["categories"])
    class_sources = [0] + [_index(categories[1:], _COCO_ALIASES.get(c, c), 1) for c in classes]
    coco_keypoints = list(weights.meta.get("keypoint_names", []))
    keypoint_sources = [_index(coco_keypoints, k, 0) for k in keypoint_names]
    class_names = ["background"] + [
        f"{c} (COCO {_COCO_ALIASES[c]})" if c in _COCO_ALIASES else c for c in classes
    ]
    merged: dict[str, torch.Tensor] = {}
    for key, mine in model.state_dict().items():
        theirs_t = theirs.get(key)
        if theirs_t is None:
            log.info("coco weights: %s is not in the COCO file; left at its initial value", key)
            merged[key] = mine
        elif key in _CLASS_ROWS:
            merged[key] = _take(
                key, mine, theirs_t, class_sources, class_names, 0, _CLASS_ROWS[key]
            )
        elif key in _KEYPOINT_DIM:
            merged[key] = _take(
                key, mine, theirs_t, keypoint_sources, keypoint_names, _KEYPOINT_DIM[key], 1
            )
        elif theirs_t.shape != mine.shape:
            log.info(
                "coco weights: %s not loaded: COCO %s, model %s",
                key,
                tuple(theirs_t.shape),
                tuple(mine.shape),
            )
            merged[key] = mine
        else:
            merged[key] = theirs_t
    model.load_state_dict(merged, strict=True)


def _index(names: Sequence[str], name: str, offset: int) -> int | None:
    return names.index(name) + offset if name in names else None


def _take(
    key: str,
    mine: torch.Tensor,
    theirs: torch.Tensor,
    sources: Sequence[int | None],
    names: Sequence[str],
    dim: int,
    block: int,
) -> torch.Tensor:
    """`mine` with the slices `i` along `dim` (`block` wide) replaced by COCO's slices
    `sources[i]`; slices without a source keep their initial values."""
    other_dims = mine.shape[:dim] + mine.shape[dim + 1 :]
    top = max((s for s in sources if s is not None), default=-1)
    if (
        theirs.shape[:dim] + theirs.shape[dim + 1 :] != other_dims
        or (top + 1) * block > theirs.shape[dim]
    ):
        log.info(
            "coco weights: %s not loaded: COCO %s, model %s",
            key,
            tuple(theirs.shape),
            tuple(mine.shape),
        )
        return mine
    out = mine.clone()
    for i, source in enumerate(sources):
        if source is not None:
            out.narrow(dim, i * block, block).copy_(theirs.narrow(dim, source * block, block))
    if list(sources) != list(range(theirs.shape[dim] // block)):
        copied = [n for n, s in zip(names, sources, strict=True) if s is not None]
        fresh = [n for n, s in zip(names, sources, strict=True) if s is None]
        log.info(
            "coco weights: %s re-shaped %s -> %s: COCO's for %s; initial values for %s",
            key,
            tuple(theirs.shape),
            tuple(mine.shape),
            ", ".join(copied) or "none",
            ", ".join(fresh) or "none",
        )
    return out
