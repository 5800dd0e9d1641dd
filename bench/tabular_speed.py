"""Tabular Q-learning speed on Taxi-v4 (and FrozenLake-v1): nnrecipe's loop vs a straightforward NumPy
loop over the wrapped gymnasium environment (the peer in ../shared/PEERS.md), same episodes and
hyper-parameters, run one after the other. Updates/s for each, the ratio, and the greedy policies'
mean returns on the same evaluation seeds (they must both be good: speed must not cost learning).

    python bench/tabular_speed.py
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.rl import runner
from nnrecipe.rl.tabular import greedy_policy, linear, train_tabular

ROOT = Path(__file__).resolve().parents[1]


def numpy_loop(env_id: str, kwargs: dict, cfg, gamma: float, seed: int):
    """What one writes first: np.argmax on a NumPy table, env.step through the wrappers."""
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(seed)
    q = np.zeros((env.observation_space.n, env.action_space.n))
    updates = 0
    env.reset(seed=seed)
    for episode in range(cfg.episodes):
        eps = linear(cfg.epsilon, cfg.epsilon_end, episode / (cfg.epsilon_decay_fraction * cfg.episodes))
        alpha = linear(cfg.alpha, cfg.alpha_end, episode / cfg.episodes)
        s, _ = env.reset()
        while True:
            a = int(rng.integers(env.action_space.n)) if rng.random() < eps else int(np.argmax(q[s]))
            s2, r, term, trunc, _ = env.step(a)
            target = r if term else r + gamma * q[s2].max()
            q[s, a] += alpha * (target - q[s, a])
            updates += 1
            if term or trunc:
                break
            s = s2
    return q, updates


def main():
    print(f"CPU: {cpu_model()}")
    for name in ("taxi-qlearning", "frozenlake-qlearning"):
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", ["track.progress=false"])
        env = runner.make_env(recipe)
        t = time.perf_counter()
        q_ours, n_ours = train_tabular(env, "qlearning", recipe.tabular, recipe.gamma, 0, runner.max_steps(env))
        ours = n_ours / (time.perf_counter() - t)
        t = time.perf_counter()
        q_np, n_np = numpy_loop(recipe.env.id, recipe.env.kwargs, recipe.tabular, recipe.gamma, 0)
        plain = n_np / (time.perf_counter() - t)
        score = {
            k: runner.evaluate_policy(
                env,
                (lambda p: lambda s: int(p[s]))(greedy_policy(q)),
                recipe.eval.episodes,
                recipe.eval.seed,
                recipe.env.id,
            )
            for k, q in (("nnrecipe", q_ours), ("numpy", q_np))
        }
        print(
            f"{recipe.env.id:14s} nnrecipe {ours:9,.0f} updates/s (greedy mean return {score['nnrecipe']['mean_return']:.3f})   "
            f"numpy loop {plain:9,.0f} updates/s (greedy mean return {score['numpy']['mean_return']:.3f})   "
            f"ratio {ours / plain:.2f}x   [{recipe.tabular.episodes:,} episodes, {recipe.eval.episodes} eval episodes]"
        )


if __name__ == "__main__":
    main()
