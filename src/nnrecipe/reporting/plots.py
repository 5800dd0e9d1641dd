"""PNG plots of a run: learning curves, confusion matrix, misclassified examples (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss curves on the left, every other val_* metric on the right."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if any(key in r for r in history):
            ax_loss.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    others = sorted({k for r in history for k in r if k.startswith("val_") and k != "val_loss"})
    for key in others:
        ax_metric.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=key)
    ax_metric.set(xlabel="epoch", title="validation metrics")
    if others:
        ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    cm = np.asarray(matrix)
    size = max(4, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix",
    )
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    cm[i, j],
                    ha="center",
                    va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                    fontsize=8,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_image_grid(images: np.ndarray, titles: list[str], path: Path, cols: int = 8) -> Path:
    """images: N x C x H x W uint8. Used for misclassified examples (title: 'true -> predicted')."""
    fig, axes = image_axes(len(images), cols, (1.6, 1.8))
    for ax, img, title in zip(axes, images, titles):
        img = np.transpose(img, (1, 2, 0))
        ax.imshow(
            img[..., 0] if img.shape[-1] == 1 else img,
            cmap="gray" if img.shape[-1] == 1 else None,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=7)
    return save_figure(fig, path)


def image_axes(n: int, cols: int, cell: tuple[float, float]):
    """A grid of axes for n images, `cols` wide, each cell (width, height) inches, axes hidden."""
    n = max(1, n)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell[0], rows * cell[1]), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
