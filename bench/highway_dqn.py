"""Driving decisions: the kept DQN policy of recipes/highway-dqn.yaml against the random policy on the
same evaluation episodes (highway-fast-v0): collision rate, mean speed, lane changes, return.

    python bench/highway_dqn.py                              # the recipe as it ships (20k steps)
    python bench/highway_dqn.py --set dqn.total_steps=10000  # a shorter budget
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.rl import runner
from nnrecipe.rl.envs import evaluate_policy, make_env
from nnrecipe.runs import create_run

ROOT = Path(__file__).resolve().parents[1]


def row(name: str, s: dict) -> str:
    return (
        f"| {name} | {s['collision_rate']:.2f} | {s['mean_speed']:.1f} | {s['lane_changes_per_episode']:.2f} | "
        f"{s['mean_return']:.2f} +/- {s['std_return']:.2f} | {s['mean_steps']:.1f} |"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides")
    ap.add_argument("--runs-dir", default="runs/bench-highway")
    args = ap.parse_args()
    recipe = load_recipe(ROOT / "recipes/highway-dqn.yaml", [f"track.runs_dir={args.runs_dir}", *args.set])
    print(f"highway-dqn, {recipe.dqn.total_steps:,} steps, CPU: {cpu_model()}", flush=True)
    start = time.perf_counter()
    trained = runner.train(recipe, create_run(recipe, "rl"))
    seconds = time.perf_counter() - start
    env, rng = make_env(recipe), np.random.default_rng(0)
    n = int(env.action_space.n)
    random = evaluate_policy(
        env, lambda obs: int(rng.integers(n)), recipe.eval.episodes, recipe.eval.seed, recipe.env.id
    )
    print(f"trained in {seconds:.0f} s ({trained['steps_per_s']:.1f} steps/s); run: {trained['run']}")
    print(f"{recipe.eval.episodes} evaluation episodes (seeds {recipe.eval.seed}..), the same for both policies:")
    print("| policy | collision rate | mean speed (m/s) | lane changes / episode | return | steps |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("random", random))
    print(row("DQN, kept network", trained))
    print(row("DQN, final network", trained["final_network"]))


if __name__ == "__main__":
    main()
