"""Image classification: data, model, loss and metrics for the engine, and the train/evaluate/predict verbs.

Everything a later `evaluate` or `predict` needs (classes, channels, size, normalisation) is stored in
the run's run.json, so inference depends on the run directory alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.augment import BatchAugment, Normalizer, channel_stats
from nnrecipe.data.images import ImageSet, conform, load_splits, read_image, read_image_tree
from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.checkpoint import load_checkpoint, split_prefix
from nnrecipe.engine.freezing import FreezeBackbone
from nnrecipe.engine.loop import Callback, Trainer, console, describe, make_accelerator
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.models import build_model, head_parameter_names
from nnrecipe.models.pretrained import load_matching, read_state_dict
from nnrecipe.recipe import Recipe
from nnrecipe.reporting.classification import classification_summary, summary_table, write_report
from nnrecipe.reporting.plots import plot_confusion, plot_image_grid
from nnrecipe.runs import Run
from nnrecipe.tasks._fit import fit_run


@dataclass
class ImageSpec:
    """What inference needs to turn a file into the model's input (saved in run.json)."""

    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    model: str

    def build_model(self, dropout: float = 0.0) -> nn.Module:
        return build_model(self.model, len(self.classes), self.channels, self.image_size, dropout)


class ImageClassifier:
    """The engine's TrainTask for cross-entropy classification."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing), len(y)

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        probs, labels = predict_probs(model, loader)
        loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item()
        return {"loss": loss, "accuracy": (probs.argmax(1) == labels).float().mean().item()}


@torch.no_grad()
def predict_probs(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (float32, CPU) and labels for every batch of `loader`."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in loader.batches():
        probs.append(model(x).float().softmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def image_spec(recipe: Recipe, splits) -> ImageSpec:
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


def _input_pipeline(recipe: Recipe, spec: ImageSpec, augment: bool):
    normalize = Normalizer(spec.mean, spec.std)
    aug = BatchAugment(recipe.data.augment, spec.image_size) if augment else None
    channels_last = recipe.model.channels_last

    def prepare(x: torch.Tensor, seed: int) -> torch.Tensor:
        if aug is not None and aug.active:
            x = aug(x, seed)
        x = normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return prepare


def _eval_loader(recipe: Recipe, spec: ImageSpec, part: ImageSet, device) -> TensorLoader:
    return TensorLoader(
        part.images,
        part.labels,
        recipe.train.eval_batch_size,
        device=device,
        prepare=_input_pipeline(recipe, spec, augment=False),
    )


def _model_for(recipe: Recipe, spec: ImageSpec) -> nn.Module:
    model = spec.build_model(recipe.model.dropout)
    if recipe.model.init_from is not None:
        loaded, fresh = load_matching(model, read_state_dict(recipe.model.init_from), str(recipe.model.init_from))
        console.print(
            f"initialised {len(loaded)} tensors from {recipe.model.init_from}; "
            f"freshly initialised: {', '.join(fresh) or 'none'}"
        )
    if recipe.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train(
    recipe: Recipe, run: Run, *, resume: bool = False, callbacks: list[Callback] = (), progress: bool | None = None
) -> dict[str, Any]:
    """Train (or resume) a run, then evaluate the best checkpoint on the test split and write the report."""
    seed_everything(recipe.train.seed)
    acc = make_accelerator(recipe.train)
    splits = load_splits(recipe.data)
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} unreadable image(s), e.g. {splits.skipped[0]}[/yellow]")
    spec = image_spec(recipe, splits)
    run.update_meta(
        status="running",
        task="image_classification",
        image=spec.__dict__,
        skipped_files=splits.skipped,
        sizes={
            k: len(v) if v is not None else 0
            for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        },
    )

    train_loader = TensorLoader(
        splits.train.images,
        splits.train.labels,
        recipe.train.batch_size,
        device=acc.device,
        shuffle=True,
        seed=recipe.train.seed,
        prepare=_input_pipeline(recipe, spec, augment=True),
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    val_loader = _eval_loader(recipe, spec, splits.val, acc.device) if splits.val is not None else None
    model = _model_for(recipe, spec)
    callbacks = list(callbacks)
    backbone: set[str] = set()
    if recipe.model.freeze == "backbone":
        head = head_parameter_names(model)
        backbone = {n for n, _ in model.named_parameters()} - head
        callbacks.insert(0, FreezeBackbone(head, recipe.model.unfreeze_at_epoch))
    optimizer = build_optimizer(model, recipe.optim, backbone, recipe.model.backbone_lr_scale)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"{recipe.model.name}: {n_params:,} parameters; {len(splits.train):,} train / "
        f"{len(splits.val) if splits.val else 0:,} val / {len(splits.test) if splits.test else 0:,} test images "
        f"({spec.channels}x{spec.image_size}x{spec.image_size}); {describe(acc)}",
        soft_wrap=True,
    )

    tracker = Tracker(run.dir, recipe.track.tensorboard, recipe.track.wandb, recipe.model_dump(mode="json"))
    trainer = Trainer(
        accelerator=acc,
        model=model,
        optimizer=optimizer,
        task=ImageClassifier(recipe.train.label_smoothing),
        train_loader=train_loader,
        val_loader=val_loader,
        train_cfg=recipe.train,
        schedule_cfg=recipe.schedule,
        run_dir=run.dir,
        tracker=tracker,
        callbacks=callbacks,
        progress=recipe.track.progress if progress is None else progress,
    )
    result = fit_run(run, trainer, tracker, resume, recipe.track.plots)
    if result.status == "interrupted":
        return {"status": result.status, "run": str(run.dir)}
    split = "test" if splits.test is not None else "val"
    part = splits.test if splits.test is not None else splits.val
    summary = _report(run, recipe, spec, part, split, acc.device) if part is not None and acc.is_main_process else {}
    return {"status": result.status, "run": str(run.dir), "history": result.history, **summary}


def inference_model(run: Run, spec: ImageSpec, device) -> nn.Module:
    """The run's best weights (the EMA copy when the run kept one), ready for eval on `device`."""
    tensors, _ = load_checkpoint(run.best_checkpoint)
    weights = split_prefix(tensors, "ema.module") or split_prefix(tensors, "model")
    model = spec.build_model()
    model.load_state_dict(weights)
    return model.to(device).eval()


def _report(
    run: Run, recipe: Recipe, spec: ImageSpec, part: ImageSet, split: str, device, source: str | None = None
) -> dict[str, Any]:
    model = inference_model(run, spec, device)
    probs, labels = predict_probs(model, _eval_loader(recipe, spec, part, device))
    pred = probs.argmax(1).numpy()
    y = labels.numpy()
    summary = classification_summary(y, pred, spec.classes)
    plots = []
    if recipe.track.plots:
        tag = split.replace("/", "_").replace(":", "_")
        plots.append(
            str(
                plot_confusion(
                    summary["confusion_matrix"], spec.classes, run.plots_dir / f"confusion_{tag}.png"
                ).relative_to(run.dir)
            )
        )
        wrong = np.flatnonzero(pred != y)[:32]
        if len(wrong):
            titles = [f"{spec.classes[y[i]]} -> {spec.classes[pred[i]]}" for i in wrong]
            plots.append(
                str(
                    plot_image_grid(
                        part.images[wrong].numpy(), titles, run.plots_dir / f"misclassified_{tag}.png"
                    ).relative_to(run.dir)
                )
            )
        if (run.plots_dir / "curves.png").exists():
            plots.insert(0, "plots/curves.png")
    extra = {
        "plots": plots,
        "source": source or f"{recipe.data.source} {split} split",
        "skipped_files": run.meta().get("skipped_files", []),
    }
    path = write_report(run.dir, split, summary, extra)
    console.print(
        f"\n{split} accuracy {summary['accuracy']:.4f} on {summary['examples']} images\n" + summary_table(summary)
    )
    console.print(f"report: {path} and {run.dir / 'report.md'}; plots: {run.dir / 'plots'}", soft_wrap=True)
    return summary


def _spec(run: Run) -> ImageSpec:
    meta = run.meta().get("image")
    if meta is None or not run.best_checkpoint.is_file():
        raise UserError(f"{run.dir} has no trained model yet (no checkpoints/best.safetensors)")
    return ImageSpec(**meta)


def evaluate(run: Run, split: str = "test", data_path: str | None = None) -> dict[str, Any]:
    """Evaluate the run's best weights on one of its splits or on any ImageFolder tree with its classes."""
    recipe, spec = run.recipe(), _spec(run)
    device = make_accelerator(recipe.train).device
    if data_path is not None:
        root = Path(data_path)
        if not root.is_dir():
            raise UserError(f"--data: folder not found: {root} (expected an ImageFolder tree: <class>/<images>)")
        skipped: list[str] = []
        part = read_image_tree(root, spec.classes, spec.channels, spec.image_size, skipped)
        if skipped:
            console.print(f"[yellow]skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}[/yellow]")
        return _report(run, recipe, spec, part, f"data:{root}", device, source=str(root))
    splits = load_splits(recipe.data)
    part = getattr(splits, split, None)
    if part is None:
        raise UserError(
            f"--split {split}: this run has no {split} split (available: train, "
            + ", ".join(s for s in ("val", "test") if getattr(splits, s) is not None)
            + ")"
        )
    return _report(run, recipe, spec, part, split, device)


def predict(run: Run, files: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Classify image files; returns label, confidence and the top-k classes per file."""
    recipe, spec = run.recipe(), _spec(run)
    device = make_accelerator(recipe.train).device
    images = torch.stack(
        [conform(read_image(Path(f), spec.channels).unsqueeze(0), spec.channels, spec.image_size)[0] for f in files]
    )
    model = inference_model(run, spec, device)
    x = _input_pipeline(recipe, spec, augment=False)(images.to(device), 0)
    with torch.no_grad():
        probs = model(x).float().softmax(1).cpu()
    out = []
    for f, p in zip(files, probs):
        top = p.topk(min(top_k, len(spec.classes)))
        out.append(
            {
                "file": str(f),
                "label": spec.classes[top.indices[0]],
                "confidence": top.values[0].item(),
                "top": {spec.classes[i]: v for v, i in zip(top.values.tolist(), top.indices.tolist())},
            }
        )
    return out
