"""The doctor for image classification: the data checks (1, 2) and the Subject that the generic checks use."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from nnrecipe.data.augment import channel_stats
from nnrecipe.data.loader import TensorLoader
from nnrecipe.doctor.checks import FAIL, PASS, WARN, Check, data_check_result, split_overlap
from nnrecipe.doctor.subject import Subject
from nnrecipe.engine.freezing import FreezeBackbone
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.models import head_parameter_names
from nnrecipe.reporting.plots import plot_image_grid
from nnrecipe.tasks.family import DoctorPlan, Splits
from nnrecipe.tasks.image_inputs import ImageSpec, image_spec, initial_model, input_pipeline, splits_of
from nnrecipe.tasks.image_recipe import ImageRecipe


def prepare(recipe: ImageRecipe) -> tuple[Splits, ImageSpec]:
    """The recipe's splits held in memory (the data check hashes every image; for a set too big for that,
    run the doctor with data.limit)."""
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"stream": False})})
    splits = splits_of(recipe)
    return splits, image_spec(recipe, splits)


def plan(recipe: ImageRecipe) -> DoctorPlan:
    splits, spec = prepare(recipe)
    subject = make_subject(recipe, splits, spec)
    return DoctorPlan(subject, [lambda out: data_check(splits, spec), lambda out: batch_check(subject, spec, out)])


def _exact_hashes(images: torch.Tensor) -> list[bytes]:
    return [hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() for img in images]


def _average_hashes(images: torch.Tensor, side: int = 16) -> list[bytes]:
    """Perceptual (average) hash: grey, resized to side x side, each pixel above the image mean -> 1."""
    grey = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    small = TF.resize(grey, [side, side], antialias=True).float().flatten(1)
    bits = (small > small.mean(1, keepdim=True)).numpy()
    return [np.packbits(b).tobytes() for b in bits]


def data_check(splits: Splits, spec: ImageSpec) -> Check:
    """1. Become one with the data: balance, duplicates across splits, unreadable files, label range, sizes."""
    verdicts, notes, details = [], [], []
    counts = Counter(splits.train.labels.tolist())
    per_class = [counts.get(i, 0) for i in range(len(spec.classes))]
    imbalance = max(per_class) / max(1, min(per_class))
    details += ["| class | train examples |", "|---|---:|"] + [
        f"| {c} | {n} |" for c, n in zip(spec.classes, per_class)
    ]
    if min(per_class) == 0:
        verdicts.append(FAIL)
        notes.append("a class has no training examples")
    elif imbalance > 10:
        verdicts.append(WARN)
        notes.append(
            f"classes are imbalanced {imbalance:.0f}:1: weight the loss or resample, and read per-class recall, not accuracy"
        )
    parts = [(n, getattr(splits, n)) for n in ("train", "val", "test") if getattr(splits, n) is not None]
    bad_labels = sum(int(((p.labels < 0) | (p.labels >= len(spec.classes))).sum()) for _, p in parts)
    if bad_labels:
        verdicts.append(FAIL)
        notes.append(f"{bad_labels} labels outside the label map (0..{len(spec.classes) - 1})")
    train_exact = set(_exact_hashes(splits.train.images))
    train_near = set(_average_hashes(splits.train.images))
    dup_figures = []
    for name, part in parts[1:]:
        exact = sum(h in train_exact for h in _exact_hashes(part.images)) / len(part)
        near = sum(h in train_near for h in _average_hashes(part.images)) / len(part)
        dup_figures.append(f"{name}: {exact:.1%} exact / {near:.1%} near duplicates of train")
        if found := split_overlap(name, exact, near, 0.10, "images", "perceptual-hash matches"):
            verdicts.append(found[0])
            notes.append(found[1])
    if splits.skipped:
        verdicts.append(WARN)
        notes.append(f"{len(splits.skipped)} unreadable files were skipped, e.g. {splits.skipped[0]}")
    within = 1 - len(train_exact) / len(splits.train)
    mean, std = channel_stats(splits.train.images)
    figure = (
        f"{len(splits.train)} train images {spec.channels}x{spec.image_size}x{spec.image_size}, {len(spec.classes)} classes, "
        f"largest/smallest class {imbalance:.1f}x; {'; '.join(dup_figures)}; {within:.1%} exact duplicates within train; "
        f"pixel mean {[round(m, 3) for m in mean]} std {[round(s, 3) for s in std]}; {len(splits.skipped)} unreadable files"
    )
    return data_check_result(figure, verdicts, notes, details)


def batch_check(subject: Subject, spec: ImageSpec, out_dir: Path) -> Check:
    """2. Visualise just before the net: one augmented batch exactly as the model receives it (de-normalised)."""
    x, y = subject.train_batches(1)[0]
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    shown = ((x[:32].float().cpu() * std + mean) * 255).clamp(0, 255).to(torch.uint8)
    plot_image_grid(shown.numpy(), [spec.classes[i] for i in y[:32].tolist()], out_dir / "batch.png")
    figure = f"batch {tuple(x.shape)}, normalised inputs: mean {x.mean():.2f}, std {x.std():.2f}, range [{x.min():.2f}, {x.max():.2f}]"
    if abs(float(x.mean())) > 1 or not 0.3 < float(x.std()) < 3:
        return Check(
            2,
            "Visualise just before the net",
            WARN,
            figure,
            "The inputs are far from zero mean / unit variance; check data.normalize.",
            plots=["batch.png"],
        )
    return Check(
        2,
        "Visualise just before the net",
        PASS,
        figure,
        "Look at batch.png: labels must match the pictures, and augmentation must leave them recognisable.",
        plots=["batch.png"],
    )


def make_subject(recipe: ImageRecipe, splits: Splits, spec: ImageSpec, max_eval: int = 1024) -> Subject:
    device = torch.device("cpu")
    seed = recipe.train.seed
    bs = recipe.train.batch_size
    head: set[str] | None = None

    def make_model():
        nonlocal head
        seed_everything(seed)
        model = initial_model(recipe, spec)
        if recipe.model.freeze == "backbone":
            head = head_parameter_names(model)
            FreezeBackbone(head, recipe.model.unfreeze_at_epoch).on_epoch_start(0, model)
        return model

    def make_optimizer(model, lr):
        backbone = {n for n, _ in model.named_parameters()} - head if head is not None else set()
        return build_optimizer(
            model, recipe.optim.model_copy(update={"lr": lr}), backbone, recipe.model.backbone_lr_scale
        )

    train_loader = TensorLoader(
        splits.train.images,
        splits.train.labels,
        bs,
        device=device,
        shuffle=True,
        seed=seed,
        prepare=input_pipeline(recipe, spec, augment=True),
    )

    def train_batches(n: int):
        out, epoch = [], 0
        while len(out) < n:
            out += list(train_loader.batches(epoch))[: n - len(out)]
            epoch += 1
        return out

    evaluation = splits.val if splits.val is not None else splits.test
    # A random subset: split files are in class order, so the first N would hold only a few classes.
    pick = torch.randperm(len(evaluation), generator=torch.Generator().manual_seed(seed))[:max_eval]
    evaluation = evaluation.subset(pick.sort().values)
    val_batches = list(
        TensorLoader(
            evaluation.images,
            evaluation.labels,
            256,
            device=device,
            prepare=input_pipeline(recipe, spec, augment=False),
        ).batches()
    )

    def accuracy(model, batches):
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
        return correct / sum(len(y) for _, y in batches)

    prior = torch.bincount(splits.train.labels, minlength=len(spec.classes)).float()
    return Subject(
        make_model=make_model,
        make_optimizer=make_optimizer,
        loss=lambda m, b: F.cross_entropy(m(b[0]), b[1], label_smoothing=recipe.train.label_smoothing),
        logits=lambda m, b: m(b[0]),
        train_batches=train_batches,
        val_batches=val_batches,
        zero_inputs=lambda b: (torch.zeros_like(b[0]), b[1]),
        inputs=lambda b: b[0],
        with_inputs=lambda b, x: (x, b[1][: len(x)]),
        accuracy=accuracy,
        class_prior=prior / prior.sum(),
        recipe_lr=recipe.optim.lr,
    )
