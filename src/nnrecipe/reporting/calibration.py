"""Whether a classifier's confidences mean anything: expected calibration error (15 equal-width bins of the
top probability, torchmetrics), the Brier score, and the reliability diagram behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnrecipe.reporting.plots import plt

BINS = 15


def calibration_summary(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """ECE and maximum calibration error over BINS bins, the Brier score (mean squared distance of the
    probability vector from the one-hot label, summed over classes), and the diagram's bins."""
    from torchmetrics.functional.classification import multiclass_calibration_error  # 5 s to import: on use

    probs, labels = probs.float(), labels.long()
    if len(labels) == 0:
        return {}
    n = probs.shape[1]
    ece = multiclass_calibration_error(probs, labels, n, n_bins=BINS, norm="l1").item()
    mce = multiclass_calibration_error(probs, labels, n, n_bins=BINS, norm="max").item()
    brier = ((probs - torch.nn.functional.one_hot(labels, n).float()) ** 2).sum(1).mean().item()
    return {"ece": ece, "mce": mce, "brier": brier, "bins": BINS, "reliability": reliability(probs, labels)}


def reliability(probs: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """Per confidence bin: how many predictions, their mean confidence and their accuracy."""
    conf, pred = probs.max(1)
    index = torch.clamp((conf * BINS).long(), max=BINS - 1)
    rows = []
    for b in range(BINS):
        hit = index == b
        if hit.any():
            rows.append({
                "low": b / BINS, "count": int(hit.sum()), "confidence": conf[hit].mean().item(),
                "accuracy": (pred[hit] == labels[hit]).float().mean().item(),
            })  # fmt: skip
    return rows


def calibration_line(entry: dict[str, Any]) -> list[str]:
    c = entry.get("calibration")
    if not c:
        return []
    return [
        f"Calibration: ECE {c['ece']:.4f} ({c['bins']} bins), maximum calibration error {c['mce']:.4f}, "
        f"Brier score {c['brier']:.4f}",
        "",
    ]


def plot_reliability(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy against confidence per bin (a calibrated model lies on the diagonal), with the counts below."""
    rows = summary["reliability"]
    width = 1 / summary["bins"]
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar([r["low"] for r in rows], [r["accuracy"] for r in rows], width=width, align="edge", edgecolor="k",
           label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="C3", label="mean confidence")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"reliability (ECE {summary['ece']:.3f})")
    ax.legend(loc="upper left")
    ax_n.bar([r["low"] for r in rows], [r["count"] for r in rows], width=width, align="edge", edgecolor="k")
    ax_n.set(xlabel="confidence (top probability)", ylabel="predictions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
