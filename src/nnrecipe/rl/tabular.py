"""Tabular Q-learning, SARSA and Expected SARSA, readable top to bottom.

The update, for a transition (s, a, r, s') with learning rate alpha and discount gamma:

    Q-learning:       Q(s,a) <- Q(s,a) + alpha * (r + gamma * max_a' Q(s',a')          - Q(s,a))
    SARSA:            Q(s,a) <- Q(s,a) + alpha * (r + gamma * Q(s',a'), a' ~ eps-greedy - Q(s,a))
    Expected SARSA:   Q(s,a) <- Q(s,a) + alpha * (r + gamma * E_{a'~eps-greedy} Q(s',a') - Q(s,a))

The bootstrap term is dropped when s' is terminal (`terminated`), and kept when the episode was only
cut off by a time limit (`truncated`): s' still has a future there.

Speed: the Q-table is a list of Python lists and the environment is stepped through `env.unwrapped`
with our own step limit, which skips gymnasium's wrapper checks; a step is a few microseconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

ALGOS = ("qlearning", "sarsa", "expected_sarsa")


def linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * min(1.0, progress)


def train_tabular(
    env,
    algo: str,
    cfg,
    gamma: float,
    seed: int,
    max_steps: int,
    q: np.ndarray | None = None,
    first_episode: int = 0,
    on_log: Callable[[dict], None] | None = None,
    is_success: Callable[[bool, bool, float, dict], bool] | None = None,
) -> tuple[np.ndarray, int]:
    """Train for cfg.episodes episodes (continuing from `first_episode` with table `q` on resume).
    Returns (Q as an array, total updates)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown tabular algorithm {algo!r}")
    n_states, n_actions = env.observation_space.n, env.action_space.n
    Q = q.tolist() if q is not None else [[cfg.q_init] * n_actions for _ in range(n_states)]
    rng = random.Random(seed * 1_000_003 + first_episode)
    game = env.unwrapped
    game.reset(seed=seed + first_episode)  # seeds the environment's own RNG (slippery transitions)

    def greedy(row: list[float]) -> int:
        best = max(row)
        if row.count(best) == 1:
            return row.index(best)
        return rng.choice([i for i, v in enumerate(row) if v == best])  # break ties at random

    def act(s: int, eps: float) -> int:
        return rng.randrange(n_actions) if rng.random() < eps else greedy(Q[s])

    updates, returns, lengths, successes = 0, [], [], 0
    decay_episodes = cfg.epsilon_decay_fraction * cfg.episodes
    for episode in range(first_episode, cfg.episodes):
        eps = linear(cfg.epsilon, cfg.epsilon_end, episode / decay_episodes)
        alpha = linear(cfg.alpha, cfg.alpha_end, episode / cfg.episodes)
        s, _ = game.reset()
        a = act(s, eps)
        total = 0.0
        for t in range(max_steps):  # noqa: B007  (t + 1 is the episode length after the loop)
            s2, r, terminated, truncated, info = game.step(a)
            row = Q[s]
            a2 = act(s2, eps)  # the next action (SARSA learns about it; all algorithms take it)
            if terminated:
                target = r
            elif algo == "qlearning":
                target = r + gamma * max(Q[s2])
            elif algo == "sarsa":
                target = r + gamma * Q[s2][a2]
            else:  # expected SARSA: eps spread uniformly, the rest on the greedy action
                nxt = Q[s2]
                target = r + gamma * (eps * sum(nxt) / n_actions + (1 - eps) * max(nxt))
            row[a] += alpha * (target - row[a])
            updates += 1
            total += r
            if terminated or truncated:
                successes += bool(is_success(terminated, truncated, r, info) if is_success else terminated and r > 0)
                break
            s, a = s2, a2
        returns.append(total)
        lengths.append(t + 1)
        if on_log is not None and (episode + 1) % cfg.log_every == 0:
            on_log(
                {
                    "episode": episode + 1,
                    "updates": updates,
                    "mean_return": float(np.mean(returns)),
                    "mean_length": float(np.mean(lengths)),
                    "success_rate": successes / len(returns),
                    "epsilon": eps,
                    "alpha": alpha,
                    "q": Q,
                }
            )
            returns, lengths, successes = [], [], 0
    return np.asarray(Q, dtype=np.float64), updates


def greedy_policy(q: np.ndarray) -> np.ndarray:
    return q.argmax(axis=1)
