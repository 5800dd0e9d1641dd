"""Classification reports from scikit-learn's metrics, written as report.json and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrecipe.reporting import merge_report, plot_lines, source_line
from nnrecipe.reporting.calibration import calibration_line, calibration_summary

# A group (fairness) with fewer examples than this is flagged: one example moves its rates by over 3 points.
MIN_GROUP_SUPPORT = 30


def classification_summary(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], probs: torch.Tensor | None = None
) -> dict[str, Any]:
    """scikit-learn's per-class report and confusion matrix; with `probs`, calibration too."""
    from sklearn.metrics import classification_report, confusion_matrix  # 2 s to import: on use

    labels = list(range(len(classes)))
    rep = classification_report(y_true, y_pred, labels=labels, target_names=classes, output_dict=True, zero_division=0)
    per_class = {c: {k: rep[c][k] for k in ("precision", "recall", "f1-score", "support")} for c in classes}
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "examples": int(len(y_true)),
        "per_class": per_class,
        "macro_avg": {k: rep["macro avg"][k] for k in ("precision", "recall", "f1-score")},
        "weighted_avg": {k: rep["weighted avg"][k] for k in ("precision", "recall", "f1-score")},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": classes,
    } | ({"calibration": calibration_summary(probs, torch.as_tensor(y_true))} if probs is not None else {})


def summary_table(summary: dict[str, Any]) -> str:
    """The per-class table in markdown (also what `evaluate` prints)."""
    lines = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for c, m in summary["per_class"].items():
        lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1-score']:.4f} | {int(m['support'])} |")
    n = summary["examples"]
    for name in ("macro_avg", "weighted_avg"):
        m = summary[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1-score']:.4f} | {n} |"
        )
    return "\n".join(lines)


def write_report(run_dir: Path, split: str, summary: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write report.json (merged: one entry per evaluated split) and report.md."""
    run_dir = Path(run_dir)
    path, report = merge_report(run_dir, split, summary | (extra or {}))
    md = [f"# Report: {run_dir.name}", ""]
    for name, s in report.items():
        md += [f"## {name}: accuracy {s['accuracy']:.4f} on {s['examples']} examples", ""]
        md += source_line(s)
        md += [summary_table(s), ""]
        md += calibration_line(s)
        md += plot_lines(s)
        if s.get("confidently_wrong"):
            md += ["Most confidently wrong:", "", "| text | label | predicted | confidence |", "|---|---|---|---:|"]
            md += [
                f"| {w['text'][:120].replace('|', '/')} | {w['label']} | {w['predicted']} | {w['confidence']:.3f} |"
                for w in s["confidently_wrong"]
            ] + [""]
        if s.get("skipped_files"):
            md += [f"Unreadable files skipped: {len(s['skipped_files'])} (listed in report.json)", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    return path
