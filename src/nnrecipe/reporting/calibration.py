"""Whether a classifier's confidences mean anything: expected calibration error (15 equal-width bins of the
top probability), the Brier score, and the reliability diagram behind them.

ECE and the maximum calibration error are read off the diagram's own bins, so the number and the picture
cannot disagree. Bins are [b/15, (b+1)/15) as in torchmetrics' `multiclass_calibration_error`, whose values
they equal (tested), except that a confidence of exactly 1 joins the last bin where torchmetrics gives it a
bin of its own; torchmetrics is not imported here because importing it costs seconds in every run that
writes a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnrecipe.reporting.plots import plt

BINS = 15


def calibration_summary(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """ECE and maximum calibration error over BINS bins, the Brier score (mean squared distance of the
    probability vector from the one-hot label, summed over classes), and the diagram's bins."""
    probs, labels = probs.float(), labels.long()
    if len(labels) == 0:
        return {}
    n = probs.shape[1]
    rows = reliability(probs, labels)
    gaps = [abs(r["accuracy"] - r["confidence"]) for r in rows]
    ece = sum(r["count"] * gap for r, gap in zip(rows, gaps, strict=True)) / len(labels)
    brier = ((probs - torch.nn.functional.one_hot(labels, n).float()) ** 2).sum(1).mean().item()
    return {"ece": ece, "mce": max(gaps), "brier": brier, "bins": BINS, "reliability": rows}


def reliability(probs: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """Per confidence bin: how many predictions, their mean confidence and their accuracy."""
    conf, pred = probs.max(1)
    # bin b holds confidences in [b/BINS, (b+1)/BINS), as torchmetrics bins them; 1.0 joins the last
    edges = torch.linspace(0, 1, BINS + 1, dtype=conf.dtype)
    index = torch.clamp(torch.bucketize(conf, edges, right=True) - 1, 0, BINS - 1)
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
