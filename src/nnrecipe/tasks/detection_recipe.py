"""The detection recipe: boxed images in YOLO, COCO or VOC form (or the generated shapes set), and Faster R-CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from nnrecipe.engine.config import ClassNames, Section, Seed
from nnrecipe.tasks.sections import TrainedRecipe


class DetectionData(Section):
    """Object-detection data: the generated shapes set, or YOLO, COCO or Pascal VOC annotations."""

    format: Literal["shapes", "yolo", "coco", "voc"] = Field(
        "shapes",
        description="shapes: a generated set (squares, circles, triangles; no files needed); yolo: images/<split> + labels/<split>; coco: instances JSON; voc: Annotations/ + JPEGImages/ + ImageSets/Main/.",
    )
    path: Path | None = Field(
        None,
        description="yolo/voc: the dataset folder; coco: the folder annotation paths are relative to; shapes: where to write the set (default ~/.cache/nnrecipe).",
    )
    train: str | None = Field(
        None,
        description="yolo: split name (default: data.yaml's train); coco: the instances JSON; voc: image-set name (e.g. trainval).",
    )
    val: str | None = Field(
        None,
        description="Validation split, same form as train; null = data.yaml's val (yolo) or hold back val_fraction of train.",
    )
    test: str | None = Field(None, description="Test split; null = report on validation.")
    classes: ClassNames | None = Field(
        None,
        description="Class names in label order; null = from data.yaml/classes.txt (yolo), the categories (coco) or the annotations (voc).",
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held back from train when there is no val split.")
    split_seed: Seed = Field(0, description="Seed of that split.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training images.")
    hflip: bool = Field(True, description="Random horizontal flips (boxes flipped with the image) in training.")


class DetectionModel(Section):
    """A torchvision Faster R-CNN whose box head is sized for the data's classes."""

    name: Literal[
        "tiny", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"
    ] = Field(
        "tiny",
        description="tiny: a small from-scratch backbone (shapes, tests, CPU demos); the others: torchvision's Faster R-CNN architectures.",
    )
    weights: Path | None = Field(
        None,
        description="Local detector weights to fine-tune from (e.g. torchvision's COCO .pth, or a run directory); the box predictor is re-initialised for your classes.",
    )
    backbone_weights: Path | None = Field(
        None,
        description="Local ImageNet weights for the backbone alone (e.g. resnet50 .pth), when no detector weights are given.",
    )
    trainable_backbone_layers: int = Field(
        3,
        ge=0,
        le=6,
        description="With pretrained weights: how many top backbone stages train (BatchNorm stays frozen); from scratch everything trains.",
    )
    min_size: int = Field(
        512,
        gt=0,
        description="Images are resized so the short side is this many pixels (torchvision uses 800; smaller is much faster on CPU).",
    )
    max_size: int = Field(853, gt=0, description="...and the long side at most this many.")
    score_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="predict/serve: report detections at least this confident (mAP is computed over all of them).",
    )


DETECTION_DEFAULTS = {
    "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 12, "batch_size": 4, "eval_batch_size": 8, "clip_grad_norm": 10.0, "monitor": "val_map"},
}


class DetectionRecipe(TrainedRecipe):
    """Object detection: Faster R-CNN trained or fine-tuned on boxes, reported as COCO mAP."""

    DEFAULTS = DETECTION_DEFAULTS
    task: Literal["detection"] = Field("detection", description="The task family.")
    data: DetectionData = Field(default_factory=DetectionData)
    model: DetectionModel = Field(default_factory=DetectionModel)

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.format in ("yolo", "coco", "voc") and self.data.path is None:
            raise ValueError(f"data.path is required with data.format: {self.data.format}")
        if self.data.format == "coco" and self.data.train is None:
            raise ValueError("data.train: give the COCO instances JSON (relative to data.path)")
        if self.data.format == "voc" and self.data.train is None:
            raise ValueError("data.train: give the VOC image-set name (ImageSets/Main/<name>.txt), e.g. trainval")
        if self.model.min_size > self.model.max_size:
            raise ValueError("model.min_size must not exceed model.max_size")
        return self
