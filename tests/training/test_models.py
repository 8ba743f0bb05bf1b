"""build_model on real torchvision models (CPU, offline): forward passes, frozen stages, weights
files, the COCO head re-shaping (from a COCO-shaped file in a temporary $TORCH_HOME) and the
errors a user sees when weights cannot be had."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torchvision.models.detection import (
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.ops import FrozenBatchNorm2d

from data.errors import AnonlabError, ConfigError
from training.config import ModelConfig
from training.models import (
    build_model,
    load_model_files,
    load_weights,
    model_files_config,
    save_weights,
)

CLASSES = ["face", "person", "license_plate", "vehicle"]
KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
H, W = 96, 128


def _config(kind: str = "maskrcnn", backbone: str = "resnet18", **changes: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "kind": kind,
        "backbone": backbone,
        "weights": "none",
        "trainable_layers": 3,
        "classes": ["person"] if kind == "keypointrcnn" else CLASSES,
        "min_size": H,
        "max_size": W,
        # Fewer proposals, sampled RoIs and detections than production: the same code runs
        # in a fraction of the CPU time (the RoI heads dominate at these image sizes).
        "proposals_per_image": 100,
        "rois_per_image": 8,
        "detections_per_image": 2,
    }
    return ModelConfig(**{**fields, **changes})


def _sample(
    kind: str, n: int = 1, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """`n` images with two instances each, in the form the dataset yields (images as floats)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        boxes = torch.tensor([[10.0, 12.0, 50.0, 80.0], [60.0, 20.0, 100.0, 60.0]])
        masks = torch.zeros(2, H, W, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
            m[y0:y1, x0:x1] = 1
        target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
        if kind == "keypointrcnn":
            target["labels"] = torch.tensor([1, 1])
            xy = boxes[:, None, :2] + torch.rand(2, len(KEYPOINTS), 2, generator=g) * 30
            target["keypoints"] = torch.cat([xy, torch.full((2, len(KEYPOINTS), 1), 2.0)], dim=2)
        images.append(torch.rand(3, H, W, generator=g))
        targets.append(target)
    return images, targets


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network and an empty torch hub cache: any download fails at once, as on a machine
    without network (and nothing is fetched on a machine that has one)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


# -- forward passes ------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize("kind", ["maskrcnn", "keypointrcnn"])
def test_forward_train_and_eval(kind: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(_config(kind, backbone), keypoint_names=KEYPOINTS)
    images, targets = _sample(kind, n=2)

    model.train()
    losses = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    expected.add("loss_mask" if kind == "maskrcnn" else "loss_keypoint")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    with torch.no_grad():
        (out,) = model(images[:1])
    n = len(out["boxes"])
    assert out["boxes"].shape == (n, 4) and out["labels"].shape == out["scores"].shape == (n,)
    if kind == "maskrcnn":
        assert out["masks"].shape == (n, 1, H, W)
        assert set(out["labels"].tolist()) <= set(range(1, len(CLASSES) + 1))
    else:
        assert out["keypoints"].shape == (n, len(KEYPOINTS), 3)
        assert set(out["labels"].tolist()) <= {1}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_no_backbone_uses_batch_statistics(backbone: str) -> None:
    frozen = build_model(_config(backbone=backbone), keypoint_names=[])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.backbone.body.modules())

    grouped = build_model(_config(backbone=backbone, norm="group_norm"), keypoint_names=[])
    norms = [m for m in grouped.backbone.body.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(
        isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in grouped.modules()
    )
    assert all(m.num_channels // m.num_groups >= 4 for m in norms)
    # Group norm trains: a backbone from random weights gets normalized activations.
    images, targets = _sample("maskrcnn")
    losses = grouped(images, targets)
    sum(losses.values()).backward()
    assert all(m.weight.grad is not None for m in norms if m.weight.requires_grad)


@pytest.mark.parametrize("weights", ["imagenet", "coco"])
def test_group_norm_refuses_pretrained_batch_norm_weights(weights: str) -> None:
    with pytest.raises(ValueError, match=f"norm = group_norm with weights = {weights}"):
        _config(norm="group_norm", weights=weights)


def test_mobilenet_fpn_sees_small_objects() -> None:
    """Faces and plates under 32 px need a stride-8 map and anchors that small."""
    model = build_model(_config(backbone="mobilenet_v3_large"), keypoint_names=[])
    features = model.backbone(torch.zeros(1, 3, 320, 320))
    assert [320 // f.shape[-1] for f in features.values()] == [8, 16, 32, 64]
    sizes = model.rpn.anchor_generator.sizes
    assert len(sizes) == len(features) and min(sizes[0]) == 16


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize("kind", ["maskrcnn", "keypointrcnn"])
def test_narrow_fpn_narrows_the_heads_and_trains(kind: str, backbone: str) -> None:
    config = _config(kind, backbone, fpn_channels=64)
    model = build_model(config, keypoint_names=KEYPOINTS)
    features = model.backbone(torch.zeros(1, 3, H, W))
    assert {f.shape[1] for f in features.values()} == {64}
    head = model.roi_heads.mask_head if kind == "maskrcnn" else model.roi_heads.keypoint_head
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 64
    assert {c.out_channels for c in convs} == {64 if kind == "maskrcnn" else 128}
    images, targets = _sample(kind)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # Narrower means fewer weights to train than torchvision's 256-wide default.
    wide = build_model(_config(kind, backbone), keypoint_names=KEYPOINTS)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in wide.parameters())


def test_narrow_fpn_is_refused_with_coco_weights() -> None:
    with pytest.raises(ValueError, match="fpn_channels = 128 with weights = coco: torchvision"):
        _config(fpn_channels=128, weights="coco")


# -- trainable layers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "most"), [("resnet18", 5), ("mobilenet_v3_large", 6)])
def test_trainable_layers_bounds(backbone: str, most: int) -> None:
    def trainable(n: int) -> tuple[int, int]:
        body = build_model(_config(backbone=backbone, trainable_layers=n), keypoint_names=[])
        flags = [p.requires_grad for p in body.backbone.body.parameters()]
        return sum(flags), len(flags)

    assert trainable(0)[0] == 0
    on, total = trainable(most)
    assert on == total > 0


def test_frozen_stages_do_not_change_in_a_step() -> None:
    torch.manual_seed(0)
    model = build_model(_config(trainable_layers=2), keypoint_names=[])
    body = model.backbone.body
    trainable = {n for n, p in body.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("layer3", "layer4")) for n in trainable)
    before = {n: p.detach().clone() for n, p in body.named_parameters()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    features = model.backbone(torch.rand(2, 3, H, W))
    sum(f.square().mean() for f in features.values()).backward()
    optimizer.step()

    after = dict(body.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    assert any(not torch.equal(before[n], after[n]) for n in trainable)


# -- weights files -------------------------------------------------------------------------------


def test_save_load_round_trip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(_config(), keypoint_names=[])
    path = tmp_path / "model" / "weights.safetensors"
    save_weights(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["weights.safetensors"]  # no temp left

    torch.manual_seed(1)
    other = build_model(_config(), keypoint_names=[])
    load_weights(other, path)
    mine, theirs = model.state_dict(), other.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)

    fewer = build_model(_config(classes=["face"]), keypoint_names=[])
    with pytest.raises(AnonlabError) as err:
        load_weights(fewer, path)
    assert "roi_heads.box_predictor.cls_score.weight" in str(err.value)
    assert "another model config" in str(err.value)


def test_load_model_files_round_trip_never_downloads(tmp_path: Path, offline: Path) -> None:
    torch.manual_seed(0)
    config = _config(backbone="mobilenet_v3_large")
    model = build_model(config, keypoint_names=KEYPOINTS).eval()
    save_weights(model, tmp_path / "weights.safetensors")
    # As trained from ImageNet weights: loading must still not download them.
    files_config = model_files_config(
        config.model_copy(update={"weights": "imagenet"}), keypoint_names=KEYPOINTS
    )
    assert files_config["keypoint_names"] == [] and files_config["format_version"] == 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(files_config), encoding="utf-8")

    loaded, raw = load_model_files(tmp_path / "config.yaml", tmp_path / "weights.safetensors")
    assert not loaded.training
    assert raw == files_config
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (want,), (got,) = model([image]), loaded([image])
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_load_model_files_keypoints(tmp_path: Path) -> None:
    config = _config("keypointrcnn", "mobilenet_v3_small")
    model = build_model(config, keypoint_names=KEYPOINTS[:3])
    save_weights(model, tmp_path / "weights.safetensors")
    files_config = model_files_config(config, keypoint_names=KEYPOINTS[:3])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(files_config), encoding="utf-8")
    loaded, raw = load_model_files(tmp_path / "config.yaml", tmp_path / "weights.safetensors")
    assert raw["keypoint_names"] == KEYPOINTS[:3]
    assert loaded.roi_heads.keypoint_predictor.out_channels == 3


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(AnonlabError, match=r"nowhere/weights\.safetensors"):
        build_model(_config(weights=str(missing)), keypoint_names=[])
    with pytest.raises(AnonlabError, match=r"nowhere/weights\.safetensors"):
        load_weights(nn.Linear(1, 1), missing)
    with pytest.raises(AnonlabError, match=r"nowhere/config\.yaml"):
        load_model_files(missing.with_name("config.yaml"), missing)
    (tmp_path / "bad.safetensors").write_text("not safetensors")
    with pytest.raises(AnonlabError, match=r"bad\.safetensors"):
        load_weights(nn.Linear(1, 1), tmp_path / "bad.safetensors")


def test_weights_from_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = build_model(_config(backbone="mobilenet_v3_small"), keypoint_names=[])
    save_weights(first, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    config = _config(backbone="mobilenet_v3_small", weights=str(tmp_path / "w.safetensors"))
    second = build_model(config, keypoint_names=[])
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- COCO and ImageNet weights -------------------------------------------------------------------


def _cache(weights: Any, model: nn.Module, torch_home: Path) -> dict[str, torch.Tensor]:
    """Put `model`'s state dict where torch.hub looks for `weights` before downloading."""
    target = torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save(state, target)
    return state


def test_coco_maskrcnn_heads_reshaped(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    coco_model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    coco = _cache(MaskRCNN_ResNet50_FPN_Weights.COCO_V1, coco_model, offline)
    with caplog.at_level(logging.INFO, logger="training.models"):
        model = build_model(_config(backbone="resnet50", weights="coco"), keypoint_names=[])
    ours = model.state_dict()

    for key in ("backbone.body.conv1.weight", "backbone.body.layer4.2.conv3.weight"):
        assert torch.equal(ours[key], coco[key])
    assert torch.equal(
        ours["backbone.fpn.layer_blocks.0.0.weight"], coco["backbone.fpn.layer_blocks.0.0.weight"]
    )
    assert torch.equal(ours["rpn.head.conv.0.0.weight"], coco["rpn.head.conv.0.0.weight"])

    # ours: 0 background, 1 face, 2 person, 3 license_plate, 4 vehicle; COCO: 1 person, 3 car
    same = {0: 0, 2: 1, 4: 3}
    for name in ("cls_score", "bbox_pred"):
        for part in ("weight", "bias"):
            key = f"roi_heads.box_predictor.{name}.{part}"
            block = 4 if name == "bbox_pred" else 1
            assert ours[key].shape[0] == 5 * block
            for i, j in same.items():
                assert torch.equal(
                    ours[key][i * block : (i + 1) * block], coco[key][j * block : (j + 1) * block]
                )
            for i in (1, 3):  # face, license_plate: not COCO classes
                row = ours[key][i * block : (i + 1) * block]
                assert not any(
                    torch.equal(row, coco[key][j * block : (j + 1) * block]) for j in range(91)
                )
    mask_key = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    assert ours[mask_key].shape[0] == 5
    for i, j in same.items():
        assert torch.equal(ours[mask_key][i], coco[mask_key][j])
    assert "cls_score.weight re-shaped" in caplog.text and "face, license_plate" in caplog.text


def test_coco_keypointrcnn_channels_by_name(
    offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    coco_model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=17)
    coco = _cache(KeypointRCNN_ResNet50_FPN_Weights.COCO_V1, coco_model, offline)
    names = [*KEYPOINTS, "chin"]  # chin: not a COCO keypoint, so it starts random
    with caplog.at_level(logging.INFO, logger="training.models"):
        model = build_model(
            _config("keypointrcnn", "resnet50", weights="coco"), keypoint_names=names
        )
    ours = model.state_dict()

    weight = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
    bias = "roi_heads.keypoint_predictor.kps_score_lowres.bias"
    assert ours[weight].shape[1] == 6  # ConvTranspose2d: (in, out, kh, kw)
    assert torch.equal(ours[weight][:, :5], coco[weight][:, :5])
    assert torch.equal(ours[bias][:5], coco[bias][:5])
    assert not any(torch.equal(ours[weight][:, 5], coco[weight][:, j]) for j in range(17))
    # background + person: the same two classes as COCO's, loaded as they are
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(ours[key], coco[key])
    assert torch.equal(
        ours["backbone.body.layer1.0.conv1.weight"], coco["backbone.body.layer1.0.conv1.weight"]
    )
    assert "kps_score_lowres.weight re-shaped" in caplog.text and "chin" in caplog.text


def test_coco_for_a_backbone_without_coco_weights() -> None:
    with pytest.raises(ConfigError) as err:
        build_model(_config(backbone="mobilenet_v3_large", weights="coco"), keypoint_names=[])
    message = str(err.value)
    assert "weights = 'coco'" in message and "mobilenet_v3_large" in message
    assert "maskrcnn + resnet50" in message and "keypointrcnn + resnet50" in message
    assert "imagenet" in message and "none" in message


@pytest.mark.parametrize(
    ("kind", "backbone", "weights"),
    [("maskrcnn", "resnet18", "imagenet"), ("keypointrcnn", "resnet50", "coco")],
)
def test_download_offline_is_a_clear_error(
    offline: Path, kind: str, backbone: str, weights: str
) -> None:
    with pytest.raises(AnonlabError) as err:
        build_model(_config(kind, backbone, weights=weights), keypoint_names=KEYPOINTS)
    message = str(err.value)
    assert "offline" in message and "$TORCH_HOME" in message
    assert str(offline / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/" in message


def test_unknown_weights_value() -> None:
    with pytest.raises(ConfigError, match="weights = 'imagenet21k'"):
        build_model(_config(weights="imagenet21k"), keypoint_names=[])


def test_corrupt_cached_download(offline: Path) -> None:
    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    cached = offline / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cut short")
    with pytest.raises(AnonlabError) as err:
        build_model(_config(backbone="resnet50", weights="coco"), keypoint_names=[])
    assert f"delete {cached}" in str(err.value)
