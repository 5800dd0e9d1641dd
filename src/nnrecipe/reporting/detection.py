"""Detection reports: COCO mAP (torchmetrics over pycocotools: AP averaged over IoU 0.50:0.95, AP50,
AP75, by object size, per class), written into report.json and report.md, and a PNG of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnrecipe.reporting import merge_report, plot_lines, source_line
from nnrecipe.reporting.plots import image_axes, save_figure


def map_metric():
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")


def detection_summary(result: dict[str, torch.Tensor], classes: list[str], images: int, boxes: int) -> dict[str, Any]:
    """torchmetrics' result -> plain numbers. Labels there are 1-based (0 is Faster R-CNN's background).
    -1 (COCO's "no such objects") becomes None."""

    def num(t) -> float | None:
        v = float(t)
        return None if v < 0 else v

    per_class = {}
    ids = result["classes"].reshape(-1).tolist()
    aps = result["map_per_class"].reshape(-1).tolist()
    for cid, ap in zip(ids, aps):
        if 1 <= cid <= len(classes):
            per_class[classes[cid - 1]] = None if ap < 0 else ap
    return {
        "map": num(result["map"]),
        "map_50": num(result["map_50"]),
        "map_75": num(result["map_75"]),
        "map_small": num(result["map_small"]),
        "map_medium": num(result["map_medium"]),
        "map_large": num(result["map_large"]),
        "mar_100": num(result["mar_100"]),
        "per_class_ap": per_class,
        "images": images,
        "boxes": boxes,
    }


def fmt(v: float | None) -> str:
    """A metric for people: four decimals, or n/a where COCO has nothing to score (no such objects)."""
    return "n/a" if v is None else f"{v:.4f}"


def detection_table(summary: dict[str, Any]) -> str:
    lines = ["| class | AP (IoU .50:.95) |", "|---|---:|"]
    lines += [f"| {name} | {fmt(ap)} |" for name, ap in summary["per_class_ap"].items()]
    return "\n".join(lines)


def write_detection_report(
    run_dir: Path, split: str, summary: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Merge this split into report.json and rewrite report.md."""
    run_dir = Path(run_dir)
    path, report = merge_report(run_dir, split, summary | (extra or {}))
    md = [f"# Report: {run_dir.name}", ""]
    for name, s in report.items():
        md += [
            f"## {name}: mAP {fmt(s['map'])} (AP50 {fmt(s['map_50'])}, AP75 {fmt(s['map_75'])}) on {s['images']} images, {s['boxes']} boxes",
            "",
        ]
        md += source_line(s)
        md += [
            f"By size: small {fmt(s['map_small'])}, medium {fmt(s['map_medium'])}, large {fmt(s['map_large'])}; "
            f"recall at 100 detections {fmt(s['mar_100'])}",
            "",
            detection_table(s),
            "",
        ]
        md += plot_lines(s)
        if s.get("skipped_files"):
            md += [f"Unreadable files skipped: {len(s['skipped_files'])} (listed in report.json)", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    return path


def plot_detections(
    images: list[torch.Tensor],
    predictions: list[dict],
    targets: list[dict],
    classes: list[str],
    path: Path,
    score_threshold: float,
    cols: int = 4,
) -> Path:
    """Predicted boxes (with class and score, at or above the threshold) in red, ground truth in green."""
    from torchvision.utils import draw_bounding_boxes

    fig, axes = image_axes(len(images), cols, (3.2, 3.2))
    for ax, img, pred, tgt in zip(axes, images, predictions, targets):
        canvas = (img.clamp(0, 1) * 255).to(torch.uint8).cpu()
        if len(tgt["boxes"]):
            canvas = draw_bounding_boxes(canvas, tgt["boxes"].cpu(), colors="lime", width=1)
        keep = pred["scores"] >= score_threshold
        names = [
            f"{classes[int(c) - 1]} {s:.2f}"
            for c, s in zip(pred["labels"][keep].tolist(), pred["scores"][keep].tolist())
        ]
        if names:
            canvas = draw_bounding_boxes(canvas, pred["boxes"][keep].cpu(), labels=names, colors="red", width=2)
        ax.imshow(canvas.permute(1, 2, 0).numpy())
    fig.suptitle("green: ground truth, red: predictions", fontsize=9)
    return save_figure(fig, path)
