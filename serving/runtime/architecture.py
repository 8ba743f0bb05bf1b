"""The detection network, built from a plain description: one builder for training and runtime.

`Architecture` is what a model is (kind, backbone, widths, classes, input size); it is stored in
a trained model's `config.yaml` and in an exported artifact's `manifest.json`. `build` makes the
torchvision network from it: Mask R-CNN (num_classes = classes + 1) or Keypoint R-CNN
(background + person, one channel per keypoint name) on an FPN. Training builds its models with
it (then loads initial weights), and the runtime's PyTorch backend rebuilds an exported model
with it before loading `weights.safetensors`, so the runtime runs exactly the trained network.

Backbones: a ResNet/ResNeXt (five stages, FPN on all four residual stages plus a max-pool level)
or a MobileNetV3 (FPN on the ends of the stride-8, -16 and -32 stages plus a max-pool level).
The MobileNet FPN is not torchvision's `fasterrcnn_mobilenet_v3_large_fpn`: that one reads two
stride-32 maps with anchors from 32 px, so a face or plate under 32 px (most of them in street
imagery) has no anchor and no feature map fine enough to be found. Here the finest map is stride
8 with 16 px anchors.

`DetectorCore` is the network as the runtime runs it and as ONNX exports it: a batch of windows
in, the detections of all of them out, each with the index of its window, without torchvision's
resize and mask pasting (the runtime resizes tiles itself and pastes each mask only over its own
box, see `serving.runtime.backends`).

This module needs torch and torchvision; the runtime imports it only for the PyTorch backend
and for export, so an onnxruntime deployment runs without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model
from torchvision.models.detection import KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["Architecture", "DetectorCore", "build"]

# The MobileNet FPN's maps (strides 8, 16, 32 and the pooled 64): two anchor sizes per level, so
# each location has the same number of anchors (one RPN head serves every level), 16 to 256 px.
_MOBILENET_ANCHOR_SIZES = ((16, 24), (32, 48), (64, 96), (128, 256))
_MOBILENET_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 4

# The ResNet stages an FPN reads, bottom to top; and what `trainable_layers` unfreezes, from the
# top (the last, conv1, is the stem).
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_RESNET_TRAINABLE = ("layer4", "layer3", "layer2", "layer1", "conv1")

# The box head's representation size (torchvision's TwoMLPHead, which MaskRCNN builds itself).
_BOX_HEAD_WIDTH = 1024


@dataclass(frozen=True)
class Architecture:
    """What the network is; everything `build` needs and nothing about training.

    classes: label i + 1 is classes[i]. keypoint_names: a keypointrcnn's channels (empty for a
    maskrcnn). min_size / max_size: torchvision's resize of each input (short side to min_size,
    long side at most max_size). trainable_layers: backbone stages that train, from the top (the
    rest are frozen; at inference it changes nothing).
    """

    kind: Literal["maskrcnn", "keypointrcnn"]
    backbone: str
    norm: Literal["frozen_bn", "group_norm"]
    fpn_channels: int
    classes: tuple[str, ...]
    keypoint_names: tuple[str, ...]
    min_size: int
    max_size: int
    proposals_per_image: int
    rois_per_image: int
    detections_per_image: int
    trainable_layers: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "keypoint_names", tuple(self.keypoint_names))
        if self.kind not in ("maskrcnn", "keypointrcnn"):
            raise ValueError(f"kind {self.kind!r}: use maskrcnn or keypointrcnn")
        if self.kind == "keypointrcnn" and not self.keypoint_names:
            raise ValueError("a keypointrcnn needs keypoint names")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["classes"], out["keypoint_names"] = list(self.classes), list(self.keypoint_names)
        return out

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> Architecture:
        """The architecture a `to_dict` wrote; ValueError naming any missing or unknown key."""
        names = {f.name for f in fields(Architecture)}
        missing, unknown = sorted(names - set(raw)), sorted(set(raw) - names)
        if missing or unknown:
            raise ValueError(f"architecture: missing keys {missing}, unknown keys {unknown}")
        return Architecture(**raw)


def build(arch: Architecture, *, backbone_weights: WeightsEnum | None = None) -> nn.Module:
    """The torchvision detection network of `arch`, on the CPU, in train mode.

    Random weights, except the backbone's when `backbone_weights` (ImageNet) is given.
    """
    if arch.backbone.startswith("mobilenet"):
        backbone = _mobilenet_fpn(arch, backbone_weights)
        anchors: AnchorGenerator | None = AnchorGenerator(
            _MOBILENET_ANCHOR_SIZES, _MOBILENET_ASPECT_RATIOS
        )
    else:
        backbone = _resnet_fpn(arch, backbone_weights)
        anchors = None  # torchvision's default: one size per level of the five-level FPN
    options = {
        "min_size": arch.min_size,
        "max_size": arch.max_size,
        "rpn_anchor_generator": anchors,
        "rpn_pre_nms_top_n_train": 2 * arch.proposals_per_image,
        "rpn_pre_nms_top_n_test": 2 * arch.proposals_per_image,
        "rpn_post_nms_top_n_train": arch.proposals_per_image,
        "rpn_post_nms_top_n_test": arch.proposals_per_image,
        "box_batch_size_per_image": arch.rois_per_image,
        "box_detections_per_img": arch.detections_per_image,
    }
    width = arch.fpn_channels
    if arch.kind == "keypointrcnn":
        # torchvision's keypoint head: eight 3x3 convolutions, twice the FPN's width.
        return KeypointRCNN(
            backbone,
            num_classes=2,
            keypoint_head=KeypointRCNNHeads(width, (2 * width,) * 8),
            keypoint_predictor=KeypointRCNNPredictor(2 * width, len(arch.keypoint_names)),
            **options,
        )
    # torchvision's mask head (four 3x3 convolutions, a 2x up-convolution), the FPN's width.
    classes = len(arch.classes) + 1
    return MaskRCNN(
        backbone,
        num_classes=None,
        box_predictor=FastRCNNPredictor(_BOX_HEAD_WIDTH, classes),
        mask_head=MaskRCNNHeads(width, (width,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, classes),
        **options,
    )


class DetectorCore(nn.Module):
    """A built network as the runtime runs it: a batch (B, 3, S, S) of float images in [0, 1]
    (S the artifact's input size: the runtime has resized and padded the windows) in, the
    detections of every image of the batch out, image after image.

    Outputs, in input pixels: boxes (N, 4), scores (N,), labels (N,) int64, for a maskrcnn the
    mask probabilities (N, M, M) over each box (M = 28, torchvision's mask resolution), for a
    keypointrcnn keypoints (N, K, 3): x, y and the keypoint's score (with keypoints=False the
    keypoint branch does not run and (N, 0, 3) comes out); last, image (N,) int64: the position
    in the batch of the image each detection was found in. Every image is handled as it would
    be alone (its own proposals, its own non-maximum suppression and detection cap), so a batch
    finds what its images one at a time find, to float rounding. torchvision's own
    postprocessing is left out: there is no resize to undo, and pasting every mask over the
    whole input costs more than the network on a CPU.

    Traced for ONNX, torchvision's loops over the images of a batch unroll: the graph takes
    exactly the batch size it was traced at (`serving.export`).
    """

    def __init__(self, model: nn.Module, *, score_threshold: float, keypoints: bool = True) -> None:
        super().__init__()
        self.model = model.eval()
        self.model.roi_heads.score_thresh = score_threshold
        self.kind = "keypointrcnn" if self.model.roi_heads.has_keypoint() else "maskrcnn"
        self.keypoints = keypoints
        if self.kind == "keypointrcnn" and not keypoints:
            # torchvision runs the keypoint branch (about 4 GFLOP per detection) only when it
            # has a keypoint RoI pooler; evaluation scores boxes and does not need it.
            self.model.roi_heads.keypoint_roi_pool = None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, S, S) batch, got {tuple(images.shape)}")
        transform = self.model.transform
        mean = torch.as_tensor(transform.image_mean, dtype=images.dtype, device=images.device)
        std = torch.as_tensor(transform.image_std, dtype=images.dtype, device=images.device)
        batch = (images - mean[:, None, None]) / std[:, None, None]
        sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * int(images.shape[0])
        features = self.model.backbone(batch)
        proposals, _ = self.model.rpn(ImageList(batch, sizes), features)
        found, _ = self.model.roi_heads(features, proposals, sizes)
        boxes = torch.cat([out["boxes"] for out in found])
        image = torch.cat([torch.full_like(out["labels"], i) for i, out in enumerate(found)])
        if self.kind == "keypointrcnn" and not self.keypoints:
            extra = boxes.new_zeros(boxes.shape[0], 0, 3)
        elif self.kind == "keypointrcnn":
            extra = torch.cat(
                [
                    torch.cat([out["keypoints"][..., :2], out["keypoints_scores"][..., None]], -1)
                    for out in found
                ]
            )
        else:
            extra = torch.cat([out["masks"][:, 0] for out in found])
        scores = torch.cat([out["scores"] for out in found])
        labels = torch.cat([out["labels"] for out in found])
        return boxes, scores, labels, extra, image


def _norm_layer(arch: Architecture) -> Callable[[int], nn.Module]:
    return FrozenBatchNorm2d if arch.norm == "frozen_bn" else _group_norm


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (MobileNets have 16-channel layers)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4)
    return nn.GroupNorm(groups, channels)


def _resnet_fpn(arch: Architecture, weights: WeightsEnum | None) -> BackboneWithFPN:
    """A ResNet's four stages (strides 4-32) under an FPN plus a pooled level, as torchvision's
    detectors have it (same module names, so COCO weights load), `fpn_channels` wide.

    `trainable_layers` counts from the top: layer4, layer3, layer2, layer1, then the stem.
    """
    body = get_model(arch.backbone, weights=weights, norm_layer=_norm_layer(arch))
    trainable = _RESNET_TRAINABLE[: arch.trainable_layers]
    if arch.trainable_layers == len(_RESNET_TRAINABLE):
        trainable += ("bn1",)  # the stem trains whole: its convolution and its norm
    for name, parameter in body.named_parameters():
        if not name.startswith(trainable):
            parameter.requires_grad_(False)
    top = body.inplanes  # the last stage's width; each stage below has half its successor's
    return BackboneWithFPN(
        body,
        return_layers={name: str(level) for level, name in enumerate(_RESNET_STAGES)},
        in_channels_list=[top // 8, top // 4, top // 2, top],
        out_channels=arch.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _mobilenet_fpn(arch: Architecture, weights: WeightsEnum | None) -> BackboneWithFPN:
    """A MobileNet's features with an FPN on the last block of its stride-8, -16 and -32 stages.

    `trainable_layers` counts stages from the end as torchvision does for MobileNets (the stem,
    one per strided block, the last conv), so configs mean the same with either FPN.
    """
    features = get_model(arch.backbone, weights=weights, norm_layer=_norm_layer(arch)).features
    starts = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    ends = [start - 1 for start in starts[1:]] + [len(features) - 1]
    taken = ends[-3:]
    stages = [0, *starts, len(features) - 1]
    trainable = arch.trainable_layers
    frozen_until = len(features) if trainable == 0 else stages[len(stages) - trainable]
    for block in features[:frozen_until]:
        block.requires_grad_(False)
    return BackboneWithFPN(
        features,
        return_layers={str(index): str(level) for level, index in enumerate(taken)},
        in_channels_list=[features[index].out_channels for index in taken],
        out_channels=arch.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
