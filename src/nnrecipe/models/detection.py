"""Faster R-CNN detectors (torchvision), built by name with a box head sized for the recipe's classes.

Weights never come from the network: `weights` is a local detector checkpoint (e.g. torchvision's
COCO-trained fasterrcnn_resnet50_fpn .pth, or an earlier run) and `backbone_weights` a local ImageNet
backbone; both load by matching names and shapes, so the box predictor (sized for another class count)
stays freshly initialised. With pretrained weights the backbone's BatchNorm is frozen and only the top
`trainable_backbone_layers` train, as in torchvision's own fine-tuning recipe. `tiny` is a small
from-scratch network for the synthetic shapes set, tests and CPU demos.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from nnrecipe.models.pretrained import load_matching, read_state_dict


class TinyBackbone(nn.Module):
    """Three stride-2 conv blocks and a stride-1 one (stride 8, 64 channels): enough for coloured shapes.
    Kept narrow because torchvision's CPU RoIAlign backward costs in proportion to channels x sampled
    RoIs (with 128 channels and 128 RoIs per image it took 70% of a training step). Scriptable, so
    detection runs export to TorchScript."""

    out_channels = 64

    def __init__(self):
        super().__init__()
        layers, width = [], 3
        for w, stride in ((32, 2), (48, 2), (64, 2), (64, 1)):
            layers += [
                nn.Conv2d(width, w, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            width = w
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"0": self.body(x)}


def build_detector(
    name: str,
    num_classes: int,
    *,
    min_size: int,
    max_size: int,
    weights: Path | None = None,
    backbone_weights: Path | None = None,
    trainable_backbone_layers: int = 3,
    box_score_thresh: float = 0.05,
    frozen_norm: bool | None = None,
    report: Callable[[str], None] = print,
) -> nn.Module:
    """`num_classes` excludes the background (Faster R-CNN's class 0), which is added here. `frozen_norm`
    (default: whether weights are given) builds the backbone with FrozenBatchNorm2d; a run trained from
    pretrained weights must be rebuilt the same way to load its checkpoint. `report` is told what loaded."""
    pretrained = weights is not None or backbone_weights is not None
    frozen = pretrained if frozen_norm is None else frozen_norm
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    layers = trainable_backbone_layers if pretrained else None  # from scratch: everything trains
    common = {"min_size": min_size, "max_size": max_size, "box_score_thresh": box_score_thresh}
    if name == "tiny":
        backbone = TinyBackbone()
        model = FasterRCNN(
            backbone,
            None,  # the class count is in box_predictor
            rpn_anchor_generator=AnchorGenerator(((16, 32, 64, 128),), ((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 1),  # one sample per bin: RoIs span few cells
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 256),
            box_predictor=FastRCNNPredictor(256, num_classes + 1),
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64,
            **common,
        )
    elif name == "fasterrcnn_resnet50_fpn":
        backbone = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=norm, trainable_layers=5 if layers is None else layers
        )
        model = FasterRCNN(backbone, num_classes + 1, **common)
    else:  # the two MobileNetV3 variants, with torchvision's anchors and (for 320) proposal counts
        # torchvision's own construction (dilated last stage), so its COCO checkpoints load name for name
        backbone = _mobilenet_extractor(
            mobilenet_v3_large(dilated=True, norm_layer=norm), True, 6 if layers is None else layers
        )
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        extra = {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150} if name.endswith("_320_fpn") else {}
        model = FasterRCNN(
            backbone, num_classes + 1, rpn_anchor_generator=anchors, rpn_score_thresh=0.05, **common, **extra
        )
    if backbone_weights is not None:
        body = getattr(model.backbone, "body", model.backbone)
        state = read_state_dict(backbone_weights)
        loaded, _ = load_matching(body, state, str(backbone_weights))
        report(f"backbone: {len(loaded)} tensors from {backbone_weights}")
    if weights is not None:
        loaded, fresh = load_matching(model, read_state_dict(weights), str(weights))
        report(f"detector: {len(loaded)} tensors from {weights}; freshly initialised: {', '.join(fresh) or 'none'}")
    return model
