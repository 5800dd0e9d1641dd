"""The image-classification recipe: where the images come from, augmentation, and the network."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nnrecipe.engine.config import ClassName, ClassNames, Section, Seed
from nnrecipe.models import check_model_name
from nnrecipe.tasks.sections import ContinualBase, TrainedRecipe


class Augment(Section):
    """Training-time augmentation (torchvision.transforms.v2 semantics), applied to whole batches."""

    crop_padding: int = Field(
        0, ge=0, description="Random crop of the original size after zero-padding this many pixels per side; 0 = off."
    )
    hflip: bool = Field(False, description="Random horizontal flip with probability 0.5.")
    rotation: float = Field(
        0.0, ge=0, le=180, description="Random rotation in [-rotation, +rotation] degrees; 0 = off."
    )
    scale: tuple[float, float] | None = Field(
        None, description="RandomResizedCrop area range, e.g. [0.6, 1.0]; null = off."
    )
    color_jitter: float = Field(0.0, ge=0, le=1, description="Brightness/contrast/saturation jitter strength; 0 = off.")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v):
        if v is not None and not (0 < v[0] <= v[1] <= 1):
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return v


class Normalize(Section):
    """Per-channel mean and standard deviation in [0, 1] pixel units."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need one value per channel and std > 0")
        return self


class ImageData(Section):
    """Where the images come from and how they are split."""

    source: Literal["digits", "cifar10", "imagefolder", "shards"] = Field(
        "digits",
        description="digits: scikit-learn's embedded 8x8 digits; cifar10: torchvision's CIFAR-10; imagefolder: a class-per-folder tree; shards: an image folder packed into WebDataset tar shards by `nnrecipe pack`.",
    )
    path: Path | None = Field(
        None,
        description="cifar10: folder holding cifar-10-batches-py (default ~/.cache/nnrecipe/cifar10); imagefolder: the tree (with train/ val/ test/ subfolders, or one tree to split); shards: the folder `nnrecipe pack` wrote.",
    )
    url: str | None = Field(
        None,
        description="shards: an fsspec URL of a packed set instead of data.path (s3://bucket/set, gs://..., https://...; simplecache::s3://... keeps each shard on local disk after its first read); needs the protocol's fsspec package (s3fs, gcsfs).",
    )
    download: bool = Field(True, description="cifar10: download when the files are missing and the network allows.")
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of the training split held back for validation when the source has no val split.",
    )
    test_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Fraction held back for testing when the source has no test split (digits, single-tree imagefolder).",
    )
    split_seed: Seed = Field(
        0, description="Seed of the stratified split, independent of the training seed so splits stay fixed."
    )
    image_size: int | None = Field(
        None,
        ge=4,
        description="Resize images to this square size (4 or more); null = the source's native size (imagefolder: the first image's).",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Convert images to 1 (grey) or 3 (RGB) channels; null = the source's own."
    )
    normalize: Literal["auto", "none"] | Normalize = Field(
        "auto", description="auto: mean/std computed on the training split; none; or {mean: [...], std: [...]}."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N training examples (quick experiments).")
    stream: Literal["auto"] | bool = Field(
        "auto",
        description="imagefolder, shards: decode images batch by batch in DataLoader workers instead of all into memory first; auto: when the decoded set would pass data.memory_cap_mb (the choice is printed).",
    )
    memory_cap_mb: int = Field(
        2048, gt=0, description="stream auto: the decoded size (N x C x H x W bytes) above which images are streamed."
    )
    workers: Literal["auto"] | int = Field(
        "auto",
        description="Streamed images: DataLoader worker processes decoding ahead; 0 = decoding in the training process (in its thread when the model computes on the CPU, by two threads ahead on a GPU); auto = 0 on up to 4 cores (measured faster on 2), else a quarter of the cores.",
    )
    classes: ClassNames | None = Field(
        None,
        min_length=1,
        description="Keep only these classes (by name, e.g. ['0', '1']), numbered in this order; null = all. "
        "Splits are cut from the whole source first, so a class's test images are the same in every recipe.",
    )
    augment: Augment = Field(default_factory=Augment)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v):
        """One line for every bad value (a union's per-branch errors named its branches, not the field)."""
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return v
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        raise ValueError("must be auto or a number of DataLoader processes, 0 or more")


class ImageModel(Section):
    """Which network to build and how to initialise it."""

    name: str = Field(
        "convnet", description="convnet, lenet5, resnet18, resnet34, mlp, tv:<torchvision model>, timm:<timm model>."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier (built-in models).")
    init_from: Path | None = Field(
        None,
        description="Weights to start from: a .safetensors file, a torch state dict (.pt/.pth, loaded weights_only) or a run directory. Layers whose shapes differ (the head) are re-initialised.",
    )
    freeze: Literal["none", "backbone"] = Field(
        "none", description="backbone: train only the classifier head (transfer learning)."
    )
    unfreeze_at_epoch: int | None = Field(
        None,
        ge=0,
        description="Epoch (0-based) at which a frozen backbone starts training, at backbone_lr_scale x the LR.",
    )
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=1, description="LR multiplier of the backbone's parameter group relative to the head."
    )
    channels_last: bool = Field(
        False, description="Use the channels_last memory format (often faster for convnets on GPU)."
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        check_model_name(v)
        return v


class Continual(ContinualBase):
    """Continual learning: a run that continues another on new data or new classes, or a list of stages."""

    selection: Literal["herding", "random"] = Field(
        "herding",
        description="replay: which examples a class keeps: herding (iCaRL, closest to its feature mean) or random.",
    )
    replay_batch: int | None = Field(
        None,
        ge=1,
        description="replay: memory examples drawn at random into every training batch (experience replay's memory "
        "batch, as Avalanche's Replay does; set it to train.batch_size for its default); null = the memory joins the "
        "new training data once (few batches' worth when the new data is large).",
    )
    stages: list[list[ClassName]] | None = Field(
        None,
        min_length=2,
        description="Class-incremental stages, e.g. [['0','1'], ['2','3']]: `train` runs one ordinary run per stage, "
        "each continuing the last, and reports the accuracy matrix, average accuracy and forgetting; null = one run.",
    )

    @model_validator(mode="after")
    def _replay_fields(self):
        if self.replay_batch is not None and self.strategy != "replay":
            raise ValueError(f"continual.replay_batch needs continual.strategy: replay (not {self.strategy})")
        return self


class ImageRecipe(TrainedRecipe):
    """Image classification: what to learn (data, model), how (optim, schedule, train), and where it goes (track)."""

    task: Literal["image_classification"] = Field("image_classification", description="The task family.")
    data: ImageData = Field(default_factory=ImageData)
    model: ImageModel = Field(default_factory=ImageModel)
    continual: Continual = Field(default_factory=Continual)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model.unfreeze_at_epoch is not None and self.model.freeze == "none":
            raise ValueError("model.unfreeze_at_epoch needs model.freeze: backbone")
        if self.optim.nesterov and self.optim.name == "sgd" and self.optim.momentum == 0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        return self
