"""Continual-learning metrics from the accuracy matrix R (R[i][j]: the model after stage i on stage j's
held-out data), as defined by Lopez-Paz & Ranzato (GEM, 2017) and Chaudhry et al. (2018), and its report."""

from __future__ import annotations

import json
from pathlib import Path

from nnrecipe.reporting.plots import plt


def continual_metrics(r: list[list[float]]) -> dict[str, float]:
    """Average accuracy after the last stage over all stages; average forgetting (best earlier accuracy of
    a stage minus its final one) and backward transfer (final minus just-learnt) over all but the last."""
    t = len(r)
    final = r[-1]
    out = {"average_accuracy": sum(final[:t]) / t}
    if t > 1:
        out["average_forgetting"] = sum(max(r[i][j] for i in range(j, t - 1)) - final[j] for j in range(t - 1)) / (
            t - 1
        )
        out["backward_transfer"] = sum(final[j] - r[j][j] for j in range(t - 1)) / (t - 1)
    return out


def write_continual_report(folder: Path, names: list[str], r: list[list[float]], runs: list[str], how: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metrics = continual_metrics(r)
    (folder / "report.json").write_text(
        json.dumps({"stages": names, "runs": runs, "accuracy_matrix": r, "strategy": how, **metrics}, indent=2)
    )
    plot_matrix(r, names, folder / "accuracy_matrix.png")
    md = [f"# Continual learning: {folder.name} ({how})", ""]
    md += [f"- average accuracy after the last stage: **{metrics['average_accuracy']:.4f}**"]
    if "average_forgetting" in metrics:
        md += [
            f"- average forgetting: **{metrics['average_forgetting']:.4f}**",
            f"- backward transfer: {metrics['backward_transfer']:+.4f}",
        ]
    md += ["", "Accuracy of the model after each stage (rows) on each stage's test data (columns):", ""]
    md += ["| after \\ on | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    md += [f"| {names[i]} (`{runs[i]}`) | " + " | ".join(f"{v:.4f}" for v in row) + " |" for i, row in enumerate(r)]
    md += ["", "![accuracy matrix](accuracy_matrix.png)", ""]
    (folder / "report.md").write_text("\n".join(md))
    return folder / "report.md"


def plot_matrix(r: list[list[float]], names: list[str], path: Path) -> Path:
    size = max(4, 0.7 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(r, cmap="viridis", vmin=0, vmax=1)
    for i, row in enumerate(r):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="evaluated on", ylabel="after training on")
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("accuracy matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
