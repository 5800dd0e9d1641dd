"""Object detection: Faster R-CNN on boxed images through the shared engine, scored as COCO mAP.

The engine sees an ordinary TrainTask: the loss is the sum of Faster R-CNN's four losses (RPN
objectness and box regression, ROI classification and box regression) and validation is mAP. Images
are decoded per batch and keep their own sizes (data/box_loader.py); the model's transform resizes and
normalises them. What inference needs (classes, architecture, sizes) is the run's spec in run.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnrecipe.data.box_loader import DetectionLoader, read_rgb
from nnrecipe.data.boxes import BoxedImage, load_detection_splits, yolo_meta
from nnrecipe.data.images import image_inputs
from nnrecipe.data.shapes import shapes_dataset
from nnrecipe.engine.checkpoint import load_weights, save_checkpoint
from nnrecipe.engine.loop import console
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.progress import progress
from nnrecipe.errors import UserError
from nnrecipe.models.detection import build_detector
from nnrecipe.reporting.detection import detection_summary, fmt, map_metric, plot_detections, write_detection_report
from nnrecipe.runs import Run
from nnrecipe.tasks import outputs
from nnrecipe.tasks.detection_recipe import DetectionRecipe
from nnrecipe.tasks.family import DetectionsExport, Inference, Metric, Splits, register_family
from nnrecipe.tasks.serving import ImageInputs, Predictor, autocast, decode_image, ort_session
from nnrecipe.tasks.supervised import Setup, SupervisedFamily, plot_paths, split_tag


@dataclass
class DetectionSpec:
    """What inference needs (the run's spec)."""

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
            report=console.print,
            **weights,
        )


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


def detection_spec(recipe: DetectionRecipe, classes: list[str]) -> DetectionSpec:
    m = recipe.model
    pretrained = m.weights is not None or m.backbone_weights is not None
    return DetectionSpec(classes, m.name, m.min_size, m.max_size, m.score_threshold, pretrained)


def detection_splits(recipe: DetectionRecipe) -> Splits:
    """The recipe's data; the shapes set is generated on first use, and YOLO splits default to data.yaml's."""
    data = recipe.data.model_copy()
    if data.format == "shapes":
        data.path = shapes_dataset(data.path or Path("~/.cache/nnrecipe"))
        data.format = "yolo"
    if data.format == "yolo" and (data.train is None or data.val is None):
        meta = yolo_meta(Path(data.path) / "data.yaml")
        if data.train is None:
            data.train = meta.get("train") or "train"
        if data.val is None and meta.get("val"):
            data.val = meta["val"]
    s = load_detection_splits(data)
    return Splits(s.train, s.val or None, s.test or None, s.skipped, s.classes, {"dropped_boxes": s.dropped_boxes})


def detections(pred: dict[str, torch.Tensor], classes: list[str], threshold: float) -> list[dict[str, Any]]:
    """One image's boxes, labels (1-based in the model, 0 is the background) and scores at or above `threshold`."""
    keep = pred["scores"] >= threshold
    return [
        {"label": classes[int(c) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
        for b, c, s in zip(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep])
    ]


@register_family
class Detection(SupervisedFamily):
    name = "detection"
    recipe = DetectionRecipe
    metric = Metric("map", "max")
    output = outputs.DETECTIONS
    card_metrics = ("map", "map_50", "map_75", "images")
    # precision auto keeps fp32 on CPUs: box regression under bf16 autocast gave val mAP 0.272 vs 0.284 after
    # 2 epochs of the shapes recipe for a 1.1x faster epoch (AMD EPYC): too little speed for the risk
    cpu_bf16 = False

    def splits(self, recipe: DetectionRecipe) -> Splits:
        return detection_splits(recipe)

    def setup(self, recipe: DetectionRecipe, splits: Splits, acc, run: Run) -> Setup:
        spec = detection_spec(recipe, splits.classes)
        t, m = recipe.train, recipe.model
        train_loader = DetectionLoader(
            splits.train,
            t.batch_size,
            device=acc.device,
            shuffle=True,
            seed=t.seed,
            hflip=recipe.data.hflip,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )
        val_loader = DetectionLoader(splits.val, t.eval_batch_size, device=acc.device) if splits.val else None
        model = spec.build_model(
            weights=m.weights,
            backbone_weights=m.backbone_weights,
            trainable_backbone_layers=m.trainable_backbone_layers,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        boxes = sum(len(b.boxes) for b in splits.train)
        n_val, n_test = (len(p) if p else 0 for p in (splits.val, splits.test))
        summary = (
            f"{m.name}: {trainable:,} trainable parameters; {len(splits.train):,} train images ({boxes:,} boxes) / "
            f"{n_val:,} val / {n_test:,} test; {len(spec.classes)} classes"
        )
        return Setup(
            model=model,
            optimizer=build_optimizer(model, recipe.optim, set(), 1.0),
            task=Detector(),
            train_loader=train_loader,
            val_loader=val_loader,
            spec=asdict(spec),
            summary=summary,
        )

    def report(
        self, run: Run, recipe: DetectionRecipe, part: list[BoxedImage], split: str, device, source: str | None = None
    ) -> dict[str, Any]:
        inf = self.inference(run, device)
        spec = inf.spec
        loader = DetectionLoader(part, recipe.train.eval_batch_size, device=device)
        result, kept = run_map(inf.model, loader, keep=8 if recipe.track.plots else 0)
        summary = detection_summary(result, spec.classes, len(part), sum(len(b.boxes) for b in part))
        names = []
        if kept:
            out = run.plots_dir / f"detections_{split_tag(split)}.png"
            names.append(
                str(plot_detections(*zip(*kept), spec.classes, out, spec.score_threshold).relative_to(run.dir))
            )
        extra = {
            "plots": plot_paths(run, *names),
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

    def read(self, run: Run, recipe: DetectionRecipe, path: Path):
        raise UserError(
            "detection runs: --data is not supported; score other data by naming it as data.test in a recipe"
        )

    def inference(self, run: Run, device="cpu") -> Inference:
        """The run's best weights (the EMA copy when the run kept one), in eval mode on `device`."""
        spec = DetectionSpec(**run.spec())
        model = spec.build_model()
        model.load_state_dict(load_weights(run.best_checkpoint))
        return Inference(model.to(device).eval(), spec.classes, spec)

    def predict(self, run: Run, inputs: list[str]) -> list[dict[str, Any]]:
        """Boxes (x1, y1, x2, y2 in the image's pixels), labels and scores at or above model.score_threshold,
        for image files (a folder: the images under it), a batch at a time."""
        files = image_inputs(inputs)
        recipe = run.recipe()
        device = self.eval_device(recipe)
        inf = self.inference(run, device)
        threshold, batch, rows = inf.spec.score_threshold, recipe.train.eval_batch_size, []
        with progress("predicting", len(files)) as advance:
            for i in range(0, len(files), batch):
                chunk = files[i : i + batch]
                with torch.no_grad():
                    preds = inf.model([read_rgb(f).to(device) for f in chunk])
                rows += [{"file": f, "detections": detections(p, inf.labels, threshold)} for f, p in zip(chunk, preds)]
                advance(len(chunk))
        return rows

    def predictor(self, run: Run, onnx_path: Path | None = None, precision: str = "fp32") -> Predictor:
        return DetectionPredictor(self, run, onnx_path, precision)

    def export_subject(self, run: Run, images: int = 8) -> DetectionsExport:
        inf = self.inference(run)
        spec = inf.spec
        splits = self.splits(run.recipe())
        part = splits.val or splits.test or splits.train
        facts = {
            "input": {
                "name": "image",
                "shape": [3, "height", "width"],
                "dtype": "float32",
                "range": "pixel / 255, RGB",
            },
            "preprocessing": {
                "resize": f"inside the model: short side {spec.min_size}, long side at most {spec.max_size}",
                "normalisation": "inside the model (ImageNet mean/std)",
            },
            "output": {
                "boxes": ["detections", 4],
                "labels": ["detections"],
                "scores": ["detections"],
                "labels_index": "1-based into labels (0 is the background)",
                "suggested_score_threshold": spec.score_threshold,
            },
        }
        return DetectionsExport(
            inf.model, [read_rgb(item.path) for item in part[:images]], facts, inf.labels, spec.model
        )

    def prune_start(self, recipe: DetectionRecipe, model: nn.Module, folder: Path) -> None:
        path = folder.with_suffix(".safetensors")
        save_checkpoint(path, model.state_dict())
        recipe.model.weights, recipe.model.backbone_weights = path, None

    def prune_keep_whole(self, model: nn.Module) -> set[str]:
        """Besides the head: the RPN's objectness and box outputs and the box predictor."""
        return super().prune_keep_whole(model) | {
            n
            for n, _ in model.named_modules()
            if n.startswith("roi_heads.box_predictor") or n in ("rpn.head.cls_logits", "rpn.head.bbox_pred")
        }


class DetectionPredictor(ImageInputs, Predictor):
    """Serving: images of any size in, boxes in that image's pixels out (above model.score_threshold)."""

    def __init__(self, family: Detection, run: Run, onnx_path: Path | None, precision: str):
        inf = family.inference(run)
        self.spec, self.labels, self.model_name = inf.spec, inf.labels, inf.spec.model
        self.onnx_path, self.precision = onnx_path, "onnx" if onnx_path is not None else precision
        if onnx_path is not None:  # the exported graph takes one image per call (see deploy/export_detection.py)
            self.session = ort_session(onnx_path)
        else:
            self.model = inf.model

    def decode(self, data: bytes, index: int) -> torch.Tensor:
        return decode_image(data, index, "RGB", self.max_pixels)  # uint8 while it waits: a quarter of float's bytes

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        images = [x.float().div_(255) for x in images]
        if self.onnx_path is not None:
            names = ("boxes", "labels", "scores")
            preds = [
                dict(zip(names, map(torch.from_numpy, self.session.run(None, {"image": x.numpy()})))) for x in images
            ]
        else:
            with torch.no_grad(), autocast(self.precision):
                preds = self.model(images)
        return [{"detections": detections(p, self.labels, self.spec.score_threshold)} for p in preds]

    def facts(self) -> dict[str, Any]:
        s = self.spec
        return {
            "input": {
                "kind": "image file (PNG, JPEG, ...), any size",
                "json": "base64 strings in 'inputs'",
                "multipart": "files",
                "max_pixels": self.max_pixels,
            },
            "preprocessing": {
                "resize": f"short side {s.min_size}, long side at most {s.max_size} (inside the model)",
                "boxes": "returned in the input image's pixels",
            },
            "output": {"detections": "label, score, box [x1, y1, x2, y2]", "score_threshold": s.score_threshold},
        }
