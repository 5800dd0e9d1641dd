"""How images become the model's input in an image-classification run: the spec a run stores (classes,
shape, normalisation, network), the training and evaluation pipelines, the splits and the fresh network.
Shared by the family (tasks/image_classification.py) and its doctor (tasks/image_doctor.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnrecipe.data.augment import BatchAugment, Normalizer, channel_stats
from nnrecipe.data.images import ImageSet, load_splits
from nnrecipe.data.loader import TensorLoader
from nnrecipe.data.stream import auto_workers
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError, first_line
from nnrecipe.models import build_model
from nnrecipe.models.pretrained import load_matching, read_state_dict
from nnrecipe.tasks.family import Splits
from nnrecipe.tasks.image_recipe import ImageRecipe


@dataclass
class ImageSpec:
    """What inference needs to turn a file into the model's input (the run's spec)."""

    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    model: str

    def build_model(self, dropout: float = 0.0) -> nn.Module:
        return build_model(self.model, len(self.classes), self.channels, self.image_size, dropout)


def image_spec(recipe: ImageRecipe, splits: Splits) -> ImageSpec:
    """Classes, input shape and normalisation (computed on the training split when `auto`)."""
    channels = splits.train.images.shape[1]
    if recipe.data.normalize == "auto":
        mean, std = channel_stats(splits.train.images)
    elif recipe.data.normalize == "none":
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        mean, std = recipe.data.normalize.mean, recipe.data.normalize.std
        if len(mean) != channels:
            raise UserError(f"data.normalize: {len(mean)} values given, the images have {channels} channels")
    return ImageSpec(splits.classes, channels, splits.train.images.shape[-1], mean, std, recipe.model.name)


def input_pipeline(recipe: ImageRecipe, spec: ImageSpec, augment: bool):
    """uint8 batch (on the device) -> the model's input: augmented (training), normalised, memory format."""
    normalize = Normalizer(spec.mean, spec.std)
    aug = BatchAugment(recipe.data.augment, spec.image_size) if augment else None
    channels_last = recipe.model.channels_last

    def prepare(x: torch.Tensor, seed: int) -> torch.Tensor:
        if aug is not None and aug.active:
            x = aug(x, seed)
        x = normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return prepare


def eval_loader(recipe: ImageRecipe, spec: ImageSpec, part: ImageSet, device) -> TensorLoader:
    return TensorLoader(
        part.images,
        part.labels,
        recipe.train.eval_batch_size,
        device=device,
        prepare=input_pipeline(recipe, spec, False),
        workers=loader_workers(recipe),
    )


def loader_workers(recipe: ImageRecipe) -> int:
    """DataLoader workers for streamed images (data.workers; auto = half the cores, at least one)."""
    return auto_workers() if recipe.data.workers == "auto" else recipe.data.workers


def initial_model(recipe: ImageRecipe, spec: ImageSpec) -> nn.Module:
    """A fresh network for the spec, started from model.init_from when the recipe names weights."""
    model = spec.build_model(recipe.model.dropout)
    takes_its_images(model, spec, recipe.model.name)
    if recipe.model.init_from is not None:
        loaded, fresh = load_matching(model, read_state_dict(recipe.model.init_from), str(recipe.model.init_from))
        console.print(
            f"initialised {len(loaded)} tensors from {recipe.model.init_from}; "
            f"freshly initialised: {', '.join(fresh) or 'none'}"
        )
    if recipe.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def takes_its_images(model: nn.Module, spec: ImageSpec, name: str) -> None:
    """One blank image of the spec's size through the model (eval, no gradients): a network too deep for
    small images is one line here, not a pooling layer's RuntimeError in the first batch."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, spec.channels, spec.image_size, spec.image_size))
    except (RuntimeError, AssertionError) as e:  # pooling below 1x1; timm's fixed-size models assert
        first = first_line(e)
        raise UserError(
            f"model.name {name}: cannot take {spec.channels}x{spec.image_size}x{spec.image_size} images ({first}); "
            "use a larger data.image_size or a shallower model"
        ) from None
    finally:
        model.train(was_training)


def splits_of(recipe: ImageRecipe, first: list[str] | None = None) -> Splits:
    """The recipe's splits; `first`: classes numbered first (those of the run a continual run continues)."""
    s = load_splits(recipe.data, first)
    return Splits(s.train, s.val, s.test, s.skipped, s.classes)
