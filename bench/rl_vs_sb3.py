"""DQN on CartPole-v1: nnrecipe vs Stable-Baselines3 with the same hyper-parameters (RL Zoo's tuned set,
as in recipes/cartpole-dqn.yaml), several seeds, run one after the other in this process.

For each tool and seed: environment steps/s (wall, evaluation included), wall seconds until the first
periodic evaluation (10 greedy episodes every 5,000 steps, the same seeds for both tools) reaches a mean
return of 475, and the final network's mean return over 20 fixed evaluation episodes. A run that
reaches 475 once and collapses afterwards shows it in the last column.

    pip install -r requirements-bench.txt     # stable-baselines3
    python bench/rl_vs_sb3.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.rl import runner
from nnrecipe.rl.dqn import actor_for, train_dqn

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 475.0


def nnrecipe_run(recipe, seed: int) -> dict:
    env = runner.make_env(recipe)
    start, solved_at, solved_step = time.perf_counter(), None, None

    def periodic(policy) -> float:
        return runner.evaluate_policy(env, policy, recipe.dqn.eval_episodes, 1_000_000, "CartPole-v1")["mean_return"]

    def log(row):
        nonlocal solved_at, solved_step
        if solved_at is None and row["eval_return"] >= SOLVED:
            solved_at, solved_step = time.perf_counter() - start, row["step"]

    out = train_dqn(lambda: runner.make_env(recipe), recipe.dqn, recipe.gamma, seed, torch.device("cpu"), periodic, log)
    final = runner.evaluate_policy(env, actor_for(out["final"], "cpu"), 20, 10_000, "CartPole-v1")["mean_return"]
    return {"seconds": time.perf_counter() - start, "solved_at": solved_at, "solved_step": solved_step, "final": final}


def sb3_run(recipe, seed: int, flush_denormals: bool = False) -> dict | None:
    try:
        from stable_baselines3 import DQN
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        return None
    c = recipe.dqn
    env = runner.make_env(recipe)
    eval_env = runner.make_env(recipe)
    model = DQN(
        "MlpPolicy",
        env,
        learning_rate=c.lr,
        buffer_size=c.buffer_size,
        learning_starts=c.learning_starts,
        batch_size=c.batch_size,
        gamma=recipe.gamma,
        train_freq=c.train_freq,
        gradient_steps=c.gradient_steps,
        target_update_interval=c.target_update,
        exploration_fraction=c.exploration_fraction,
        exploration_initial_eps=c.epsilon,
        exploration_final_eps=c.epsilon_end,
        max_grad_norm=c.max_grad_norm,
        policy_kwargs={"net_arch": c.hidden},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    policy = lambda obs: int(model.predict(obs, deterministic=True)[0])  # noqa: E731
    start, state = time.perf_counter(), {"solved_at": None, "solved_step": None}

    class Periodic(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % c.eval_every == 0:
                r = runner.evaluate_policy(eval_env, policy, c.eval_episodes, 1_000_000, "CartPole-v1")["mean_return"]
                if state["solved_at"] is None and r >= SOLVED:
                    state["solved_at"], state["solved_step"] = time.perf_counter() - start, self.num_timesteps
            return True

    torch.set_flush_denormal(flush_denormals)  # off by default, as SB3 leaves it; on: what nnrecipe sets
    try:
        model.learn(total_timesteps=c.total_steps, callback=Periodic())
    finally:
        torch.set_flush_denormal(False)
    final = runner.evaluate_policy(eval_env, policy, 20, 10_000, "CartPole-v1")["mean_return"]
    return {
        "seconds": time.perf_counter() - start,
        "solved_at": state["solved_at"],
        "solved_step": state["solved_step"],
        "final": final,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--sb3-flush-denormals",
        action="store_true",
        help="give SB3 the subnormal-flushing setting nnrecipe's DQN uses (SB3 runs without it by default)",
    )
    args = ap.parse_args()
    recipe = load_recipe(ROOT / "recipes/cartpole-dqn.yaml", ["track.progress=false"])
    # Warm-up: the first optimiser built in a process pays a one-time import (~1.4 s); not either tool's cost.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    steps = recipe.dqn.total_steps
    print(f"CartPole-v1 DQN, {steps:,} steps, {torch.get_num_threads()} torch threads, CPU: {cpu_model()}")
    results: dict[str, list[dict]] = {"nnrecipe": [], "sb3": []}
    for seed in args.seeds:
        sb3 = lambda recipe, seed: sb3_run(recipe, seed, args.sb3_flush_denormals)  # noqa: E731
        for name, fn in (("nnrecipe", nnrecipe_run), ("sb3", sb3)):
            r = fn(recipe, seed)
            if r is None:
                continue
            results[name].append(r)
            solved = f"{r['solved_at']:.1f} s ({r['solved_step']:,} steps)" if r["solved_at"] is not None else "never"
            print(
                f"seed {seed}  {name:9s} {steps / r['seconds']:7,.0f} steps/s   475 reached after {solved:>22s}   "
                f"final mean return {r['final']:.1f}",
                flush=True,
            )
    if not results["sb3"]:
        print("stable-baselines3 not installed: pip install -r requirements-bench.txt")
        return
    sps = {k: statistics.median(steps / r["seconds"] for r in v) for k, v in results.items()}
    solve = {
        k: statistics.median(r["solved_at"] if r["solved_at"] is not None else float("inf") for r in v)
        for k, v in results.items()
    }
    print(
        f"median steps/s: nnrecipe {sps['nnrecipe']:,.0f}, sb3 {sps['sb3']:,.0f}; ratio {sps['nnrecipe'] / sps['sb3']:.2f}x"
    )
    steps_to = {
        k: statistics.median(r["solved_step"] if r["solved_step"] is not None else float("inf") for r in v)
        for k, v in results.items()
    }
    print(f"median environment steps to 475: nnrecipe {steps_to['nnrecipe']:,.0f}, sb3 {steps_to['sb3']:,.0f}")
    print(
        f"median seconds to 475: nnrecipe {solve['nnrecipe']:.1f}, sb3 {solve['sb3']:.1f}; "
        f"ratio (time-to-solve speed-up) {solve['sb3'] / solve['nnrecipe']:.2f}x"
    )


if __name__ == "__main__":
    main()
