"""Value iteration on a known model: the oracle that tabular learning is tested against."""

from __future__ import annotations

import numpy as np


def value_iteration(
    P: dict, n_states: int, n_actions: int, gamma: float, tol: float = 1e-10, max_iter: int = 100_000
) -> np.ndarray:
    """Q* from P[s][a] = [(prob, next_state, reward, terminated)] (gymnasium toy-text convention)."""
    q = np.zeros((n_states, n_actions))
    for _ in range(max_iter):
        v = q.max(axis=1)
        new = np.array(
            [
                [
                    sum(p * (r + (0.0 if done else gamma * v[s2])) for p, s2, r, done in P[s][a])
                    for a in range(n_actions)
                ]
                for s in range(n_states)
            ]
        )
        if np.abs(new - q).max() < tol:
            return new
        q = new
    return q
