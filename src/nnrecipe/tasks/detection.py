"""Object detection: Faster R-CNN on boxed images through the shared engine, scored as COCO mAP.

The engine sees an ordinary TrainTask: the loss is the sum of Faster R-CNN's four losses (RPN
objectness and box regression, ROI classification and box regression) and validation is mAP. Images
are decoded per batch and keep their own sizes; the model's transform resizes and normalises them.
What inference needs (classes, architecture, sizes) is stored in run.json.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from nnrecipe.data.boxes import BoxedImage, DetectionSplits, load_detection_splits
from nnrecipe.engine.checkpoint import load_checkpoint, split_prefix
from nnrecipe.engine.loop import Callback, Trainer, console, describe, make_accelerator
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.seeding import derived_seed, seed_everything
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.models.detection import build_detector
from nnrecipe.reporting.detection import detection_summary, fmt, map_metric, plot_detections, write_detection_report
from nnrecipe.runs import Run
from nnrecipe.tasks._fit import fit_run


@dataclass
class DetectionSpec:
    """What inference needs (saved in run.json)."""

    classes: list[str]
    model: str
    min_size: int
    max_size: int
    score_threshold: float
    frozen_norm: bool = False  # started from pretrained weights: the backbone's BatchNorm is frozen

    def build_model(self, **weights) -> nn.Module:
        return build_detector(
            self.model,
            len(self.classes),
            min_size=self.min_size,
            max_size=self.max_size,
            frozen_norm=self.frozen_norm,
            **weights,
        )


def read_rgb(path: str) -> torch.Tensor:
    """float32 3 x H x W in [0, 1]; UserError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return TF.to_dtype(TF.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


class DetectionLoader:
    """Batches of (images, targets) on the device: a list of 3 x H x W float tensors and a list of
    {"boxes", "labels"} with labels shifted by one (0 is the background). The order of epoch e and the
    flips of batch i derive from (seed, e[, i]), so resuming mid-epoch reproduces the rest exactly. An
    image that fails to decode is reported once and left out of its batch."""

    def __init__(
        self,
        items: list[BoxedImage],
        batch_size: int,
        *,
        device,
        shuffle: bool = False,
        seed: int = 0,
        hflip: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.items, self.batch_size, self.device = items, batch_size, torch.device(device)
        self.shuffle, self.seed, self.hflip = shuffle, seed, hflip
        self.rank, self.world_size = rank, world_size
        self._per_rank = len(items) // world_size if world_size > 1 else len(items)
        self._len = math.ceil(self._per_rank / batch_size)
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
        if self.shuffle:
            order = torch.randperm(
                len(self.items), generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            ).tolist()
        else:
            order = list(range(len(self.items)))
        if self.world_size > 1:
            order = order[self.rank :: self.world_size][: self._per_rank]
        for i in range(start, self._len):
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch, i))
            images, targets = [], []
            for j in order[i * self.batch_size : (i + 1) * self.batch_size]:
                item = self.items[j]
                try:
                    img = read_rgb(item.path)
                except UserError as e:
                    if item.path not in self.unreadable:
                        self.unreadable.add(item.path)
                        console.print(f"[yellow]skipped: {e}[/yellow]")
                    continue
                boxes = item.boxes
                if self.hflip and torch.rand((), generator=g) < 0.5:
                    img = TF.horizontal_flip(img)
                    boxes = TF.horizontal_flip(
                        tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=img.shape[-2:])
                    ).as_subclass(torch.Tensor)
                images.append(img.to(self.device))
                targets.append({"boxes": boxes.to(self.device), "labels": (item.labels + 1).to(self.device)})
            if images:
                yield images, targets


class Detector:
    """The engine's TrainTask for Faster R-CNN."""

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        images, targets = batch
        losses = model(images, targets)
        return sum(losses.values()), len(images)

    def evaluate(self, model: nn.Module, loader: DetectionLoader) -> dict[str, float]:
        result = run_map(model, loader)[0]
        return {k: float(result[k]) for k in ("map", "map_50", "map_75")}


@torch.no_grad()
def run_map(model: nn.Module, loader: DetectionLoader, keep: int = 0) -> tuple[dict, list]:
    """COCO mAP of `model` over `loader`; also returns the first `keep` (image, prediction, target) triples."""
    was_training = model.training
    model.eval()
    metric, kept = map_metric(), []
    for images, targets in loader.batches():
        preds = [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in p.items()} for p in model(images)]
        targets = [{k: v.cpu() for k, v in t.items()} for t in targets]
        metric.update(preds, targets)
        for img, p, t in zip(images, preds, targets):
            if len(kept) < keep:
                kept.append((img.cpu(), p, t))
    model.train(was_training)
    return metric.compute(), kept


def detection_spec(recipe, splits: DetectionSplits) -> DetectionSpec:
    m = recipe.model
    pretrained = m.weights is not None or m.backbone_weights is not None
    return DetectionSpec(splits.classes, m.name, m.min_size, m.max_size, m.score_threshold, pretrained)


def load_splits(recipe) -> DetectionSplits:
    """The recipe's data; the shapes set is generated on first use, and YOLO splits default to data.yaml's."""
    data = recipe.data.model_copy()
    if data.format == "shapes":
        from nnrecipe.data.shapes import shapes_dataset

        data.path = shapes_dataset(data.path or Path("~/.cache/nnrecipe"))
        data.format = "yolo"
    if data.format == "yolo" and (data.train is None or data.val is None):
        import yaml

        meta_file = Path(data.path) / "data.yaml"
        meta = (yaml.safe_load(meta_file.read_text()) or {}) if meta_file.is_file() else {}
        if data.train is None:
            data.train = meta.get("train") or "train"
        if data.val is None and meta.get("val"):
            data.val = meta["val"]
    return load_detection_splits(data)


def train(
    recipe, run: Run, *, resume: bool = False, callbacks: list[Callback] = (), progress: bool | None = None
) -> dict[str, Any]:
    """Train (or resume) a detector, then score the best checkpoint on test (else val) and write the report."""
    seed_everything(recipe.train.seed)
    acc = make_accelerator(recipe.train)
    splits = load_splits(recipe)
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} unreadable file(s), e.g. {splits.skipped[0]}[/yellow]")
    spec = detection_spec(recipe, splits)
    sizes = {
        k: len(v) if v is not None else 0
        for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    run.update_meta(
        status="running",
        task="detection",
        detection=spec.__dict__,
        skipped_files=splits.skipped,
        sizes=sizes,
        dropped_boxes=splits.dropped_boxes,
    )
    train_loader = DetectionLoader(
        splits.train,
        recipe.train.batch_size,
        device=acc.device,
        shuffle=True,
        seed=recipe.train.seed,
        hflip=recipe.data.hflip,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    val_loader = DetectionLoader(splits.val, recipe.train.eval_batch_size, device=acc.device) if splits.val else None
    model = spec.build_model(
        weights=recipe.model.weights,
        backbone_weights=recipe.model.backbone_weights,
        trainable_backbone_layers=recipe.model.trainable_backbone_layers,
    )
    optimizer = build_optimizer(model, recipe.optim, set(), 1.0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    boxes = sum(len(b.boxes) for b in splits.train)
    console.print(
        f"{recipe.model.name}: {trainable:,} trainable parameters; {sizes['train']:,} train images ({boxes:,} boxes) / "
        f"{sizes['val']:,} val / {sizes['test']:,} test; {len(spec.classes)} classes; {describe(acc)}"
    )
    tracker = Tracker(run.dir, recipe.track.tensorboard, recipe.track.wandb, recipe.model_dump(mode="json"))
    trainer = Trainer(
        accelerator=acc,
        model=model,
        optimizer=optimizer,
        task=Detector(),
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
    split, part = ("test", splits.test) if splits.test else ("val", splits.val)
    summary = _report(run, recipe, spec, part, split, acc.device) if part and acc.is_main_process else {}
    return {"status": result.status, "run": str(run.dir), "history": result.history, **summary}


def _spec(run: Run) -> DetectionSpec:
    meta = run.meta().get("detection")
    if meta is None or not run.best_checkpoint.is_file():
        raise UserError(f"{run.dir} has no trained model yet (no checkpoints/best.safetensors)")
    return DetectionSpec(**meta)


def inference_model(run: Run, spec: DetectionSpec, device) -> nn.Module:
    """The run's best weights (the EMA copy when the run kept one), in eval mode on `device`."""
    tensors, _ = load_checkpoint(run.best_checkpoint)
    model = spec.build_model()
    model.load_state_dict(split_prefix(tensors, "ema.module") or split_prefix(tensors, "model"))
    return model.to(device).eval()


def _report(
    run: Run, recipe, spec: DetectionSpec, part: list[BoxedImage], split: str, device, source: str | None = None
) -> dict[str, Any]:
    model = inference_model(run, spec, device)
    loader = DetectionLoader(part, recipe.train.eval_batch_size, device=device)
    result, kept = run_map(model, loader, keep=8 if recipe.track.plots else 0)
    summary = detection_summary(result, spec.classes, len(part), sum(len(b.boxes) for b in part))
    plots = []
    if kept:
        tag = split.replace("/", "_").replace(":", "_")
        path = plot_detections(*zip(*kept), spec.classes, run.plots_dir / f"detections_{tag}.png", spec.score_threshold)
        plots.append(str(path.relative_to(run.dir)))
    if (run.plots_dir / "curves.png").exists():
        plots.insert(0, "plots/curves.png")
    extra = {
        "plots": plots,
        "source": source or f"{recipe.data.format} {split} split",
        "skipped_files": run.meta().get("skipped_files", []) + sorted(loader.unreadable),
    }
    report = write_detection_report(run.dir, split, summary, extra)
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_class_ap"].items() if v is not None)
    console.print(
        f"\n{split} mAP {fmt(summary['map'])} (AP50 {fmt(summary['map_50'])}, AP75 {fmt(summary['map_75'])}) on "
        f"{summary['images']} images, {summary['boxes']} boxes\nper class AP: {per_class or 'n/a'}"
    )
    console.print(f"report: {report} and {run.dir / 'report.md'}; plots: {run.plots_dir}", soft_wrap=True)
    return summary


def evaluate(run: Run, split: str = "test", data_path: str | None = None) -> dict[str, Any]:
    """Score the run's best weights on one of its splits."""
    recipe, spec = run.recipe(), _spec(run)
    if data_path is not None:
        raise UserError(
            "detection runs: --data is not supported; score other data by naming it as data.test in a recipe"
        )
    splits = load_splits(recipe)
    part = getattr(splits, split)
    if not part:
        raise UserError(
            f"--split {split}: this run has no {split} split (available: train"
            + "".join(f", {s}" for s in ("val", "test") if getattr(splits, s))
            + ")"
        )
    return _report(run, recipe, spec, part, split, make_accelerator(recipe.train).device)


def predict(run: Run, files: list[str]) -> list[dict[str, Any]]:
    """Boxes (x1, y1, x2, y2 in the image's pixels), labels and scores at or above model.score_threshold."""
    spec = _spec(run)
    device = make_accelerator(run.recipe().train).device
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise UserError(f"image not found: {missing[0]}")
    model = inference_model(run, spec, device)
    with torch.no_grad():
        preds = model([read_rgb(f).to(device) for f in files])
    return [
        {"file": str(f), "detections": detections(p, spec.classes, spec.score_threshold)} for f, p in zip(files, preds)
    ]


def detections(pred: dict[str, torch.Tensor], classes: list[str], threshold: float) -> list[dict[str, Any]]:
    keep = pred["scores"] >= threshold
    return [
        {"label": classes[int(c) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
        for b, c, s in zip(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep])
    ]
