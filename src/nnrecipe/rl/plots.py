"""RL pictures: the return curve, and for grid worlds V(s) = max_a Q(s,a) with the policy and path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnrecipe.rl.gridworld import MOVES  # noqa: E402


def plot_returns(history: list[dict], path: Path) -> Path:
    x_key = "episode" if "episode" in history[0] else "step"
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("mean_return", "train_return", "eval_return"):
        if any(r.get(key) is not None for r in history):
            ax.plot(
                [r[x_key] for r in history],
                [r.get(key) if r.get(key) is not None else np.nan for r in history],
                marker=".",
                label=key,
            )
    ax.set(xlabel=x_key, ylabel="return", title="returns during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_grid(rows: list[str], values: np.ndarray, policy: np.ndarray, path_states: list[int], path: Path) -> Path:
    nrow, ncol = len(rows), len(rows[0])
    v = values.reshape(nrow, ncol).astype(float).copy()
    walls = np.array([[c == "#" for c in r] for r in rows])
    v[walls] = np.nan
    fig, ax = plt.subplots(figsize=(max(4, ncol * 0.6 + 1.5), max(3, nrow * 0.6 + 0.5)))
    im = ax.imshow(v, cmap="viridis")
    fig.colorbar(im, ax=ax, label="V(s) = max_a Q(s,a)")
    for s in range(nrow * ncol):
        r, c = divmod(s, ncol)
        cell = rows[r][c]
        if cell in "SG~#":
            ax.text(c, r, cell, ha="center", va="center", color="white", fontsize=11, fontweight="bold")
        else:
            dr, dc = MOVES[int(policy[s])]
            ax.arrow(
                c - dc * 0.2,
                r - dr * 0.2,
                dc * 0.3,
                dr * 0.3,
                head_width=0.15,
                color="white",
                length_includes_head=True,
            )
    ys, xs = zip(*(divmod(s, ncol) for s in path_states))
    ax.plot(xs, ys, color="red", linewidth=2, alpha=0.8, label="greedy path")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("value, policy and greedy path")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
