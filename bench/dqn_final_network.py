"""Does DQN's final network (not only the kept best) solve CartPole on every seed? recipes/cartpole-dqn.yaml
over seeds 0..N-1 with recipe overrides, the final network scored over 20 fixed evaluation episodes.

    python bench/dqn_final_network.py 6                       # as shipped
    python bench/dqn_final_network.py 6 dqn.lr_end=0          # one setting changed
    python bench/dqn_final_network.py 3:6                     # seeds 3, 4, 5 (run halves side by side)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.rl.dqn import actor_for, train_dqn
from nnrecipe.rl.envs import evaluate_policy, make_env

ROOT = Path(__file__).resolve().parents[1]


def main():
    first, _, last = (sys.argv[1] if len(sys.argv) > 1 else "6").rpartition(":")
    seeds, overrides = range(int(first or 0), int(last)), sys.argv[2:]
    recipe = load_recipe(ROOT / "recipes/cartpole-dqn.yaml", ["track.progress=false", *overrides])
    env = make_env(recipe)

    def periodic(policy) -> float:
        return evaluate_policy(env, policy, recipe.dqn.eval_episodes, 1_000_000, recipe.env.id)["mean_return"]

    finals, speeds = [], []
    for seed in seeds:
        start = time.perf_counter()
        out = train_dqn(
            lambda: make_env(recipe, training=True), recipe.dqn, recipe.gamma, seed, torch.device("cpu"), periodic
        )
        speeds.append(recipe.dqn.total_steps / (time.perf_counter() - start))
        finals.append(evaluate_policy(env, actor_for(out["final"], "cpu"), 20, 10_000, recipe.env.id)["mean_return"])
        print(
            f"seed {seed} {speeds[-1]:,.0f} steps/s  final {finals[-1]:.1f}  "
            f"best {out['best_return']:.1f} at step {out['best_step']:,}",
            flush=True,
        )
    print(
        f"{overrides or 'as shipped'}: final >= 475 on {sum(f >= 475 for f in finals)} of {len(seeds)}; "
        f"median {statistics.median(speeds):,.0f} steps/s; CPU: {cpu_model()}"
    )


if __name__ == "__main__":
    main()
