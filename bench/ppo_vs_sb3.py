"""PPO: nnrecipe vs Stable-Baselines3's PPO with the same settings (RL Zoo's tuned set, as in
recipes/cartpole-ppo.yaml and recipes/lunarlander-ppo.yaml), several seeds, one after the other here.

For each tool and seed: environment steps/s (wall, the periodic evaluations included: eval_episodes greedy
episodes every eval_every steps and at the end, on the same seeds for both tools) and the final network's
mean return over 20 fixed evaluation episodes; then the medians and how many seeds end solved.

    pip install -r requirements-bench.txt     # stable-baselines3
    python bench/ppo_vs_sb3.py --env cartpole --seeds 0 1 2 3 4 5
    python bench/ppo_vs_sb3.py --env lunarlander --seeds 0 1 --set ppo.total_steps=300000
    python bench/ppo_vs_sb3.py --env pong --seeds 0 --set ppo.total_steps=100000    # a CPU budget
    python bench/ppo_vs_sb3.py --env breakout --seeds 0 --set ppo.total_steps=500000 ppo.eval_every=100000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.rl.envs import evaluate_policy, make_env
from nnrecipe.rl.networks import policy_actions
from nnrecipe.rl.ppo import train_ppo

ROOT = Path(__file__).resolve().parents[1]
ENVS = {
    "cartpole": ("cartpole-ppo.yaml", 475.0),
    "lunarlander": ("lunarlander-ppo.yaml", 200.0),
    "pong": ("pong-ppo.yaml", 18.0),
    "breakout": ("breakout-ppo.yaml", 400.0),  # CleanRL's level at 10M steps; a CPU budget reaches far less
}
PERIODIC_SEED, FINAL_SEED = 1_000_000, 10_000


def nnrecipe_run(recipe, seed: int) -> dict:
    env, c = make_env(recipe), recipe.ppo
    start = time.perf_counter()

    def periodic(policy) -> float:
        r = evaluate_policy(env, policy, c.eval_episodes, PERIODIC_SEED, recipe.env.id)["mean_return"]
        print(f"  nnrecipe periodic evaluation at {time.perf_counter() - start:7.1f} s: {r:.1f}", flush=True)
        return r

    device = torch.device("cuda" if c.device != "cpu" and torch.cuda.is_available() else "cpu")
    out = train_ppo(lambda: make_env(recipe, training=True), c, recipe.gamma, seed, device, periodic)
    seconds = time.perf_counter() - start
    policy = policy_actions(out["final"], out["spec"], device)
    final = evaluate_policy(env, policy, 20, FINAL_SEED, recipe.env.id)["mean_return"]
    return {"seconds": seconds, "final": final, "best": out["best_return"]}


def sb3_run(recipe, seed: int) -> dict | None:
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
    except ImportError:
        return None
    c = recipe.ppo
    vec = SubprocVecEnv if c.vector == "async" else DummyVecEnv
    envs = make_vec_env(lambda: make_env(recipe, training=True), n_envs=c.num_envs, seed=seed, vec_env_cls=vec)
    eval_env = make_env(recipe)
    pixels = len(envs.observation_space.shape) == 3  # SB3's CnnPolicy: the same shared Nature CNN and heads
    model = PPO(
        "CnnPolicy" if pixels else "MlpPolicy",
        envs,
        learning_rate=(lambda p: c.lr * p) if c.anneal_lr else c.lr,
        n_steps=c.num_steps,
        batch_size=c.minibatch_size,
        n_epochs=c.epochs,
        gamma=recipe.gamma,
        gae_lambda=c.gae_lambda,
        clip_range=(lambda p: c.clip * p) if c.anneal_clip else c.clip,
        clip_range_vf=c.clip if c.clip_value else None,
        normalize_advantage=c.normalize_advantages,
        ent_coef=c.ent_coef,
        vf_coef=c.vf_coef,
        max_grad_norm=c.max_grad_norm,
        policy_kwargs={} if pixels else {"net_arch": {"pi": c.hidden, "vf": c.hidden}},
        seed=seed,
        device="cuda" if c.device != "cpu" and torch.cuda.is_available() else "cpu",
        verbose=0,
    )
    policy = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
    best = {"return": float("-inf")}

    class Periodic(BaseCallback):
        """Every eval_every steps and once more at the end, as nnrecipe evaluates (it keeps the best network):
        both tools do the same evaluation work inside the clock."""

        last = -1

        def evaluate(self) -> None:
            r = evaluate_policy(eval_env, policy, c.eval_episodes, PERIODIC_SEED, recipe.env.id)["mean_return"]
            print(
                f"  sb3 periodic evaluation at {time.perf_counter() - start:7.1f} s, step {self.num_timesteps:,}: {r:.1f}",
                flush=True,
            )
            best["return"], self.last = max(best["return"], r), self.num_timesteps

        def _on_step(self) -> bool:
            if self.num_timesteps % c.eval_every < c.num_envs:
                self.evaluate()
            return True

        def _on_training_end(self) -> None:
            if self.last != self.num_timesteps:
                self.evaluate()

    start = time.perf_counter()
    model.learn(total_timesteps=c.total_steps, callback=Periodic())
    seconds = time.perf_counter() - start
    final = evaluate_policy(eval_env, policy, 20, FINAL_SEED, recipe.env.id)["mean_return"]
    return {"seconds": seconds, "final": final, "best": best["return"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", choices=sorted(ENVS), default="cartpole")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. ppo.total_steps=300000")
    args = ap.parse_args()
    name, solved = ENVS[args.env]
    recipe = load_recipe(ROOT / "recipes" / name, ["track.progress=false", *args.set])
    steps = recipe.ppo.total_steps
    print(f"{recipe.env.id} PPO, {steps:,} steps, {torch.get_num_threads()} torch threads, CPU: {cpu_model()}")
    results: dict[str, list[dict]] = {"nnrecipe": [], "sb3": []}
    for seed in args.seeds:
        for tool, fn in (("nnrecipe", nnrecipe_run), ("sb3", sb3_run)):
            r = fn(recipe, seed)
            if r is None:
                continue
            results[tool].append(r)
            print(
                f"seed {seed}  {tool:9s} {steps / r['seconds']:7,.0f} steps/s  {r['seconds']:6.1f} s  "
                f"best periodic {r['best']:7.1f}  final network {r['final']:7.1f}",
                flush=True,
            )
    if not results["sb3"]:
        print("stable-baselines3 not installed: pip install -r requirements-bench.txt")
        return
    sps = {k: statistics.median(steps / r["seconds"] for r in v) for k, v in results.items()}
    for k, v in results.items():
        finals = [r["final"] for r in v]
        print(
            f"{k:9s} median {sps[k]:,.0f} steps/s; final return median {statistics.median(finals):.1f}, "
            f"mean {statistics.mean(finals):.1f} +/- {statistics.pstdev(finals):.1f}; "
            f"{sum(f >= solved for f in finals)} of {len(finals)} seeds end >= {solved:g}"
        )
    print(f"steps/s ratio nnrecipe / sb3: {sps['nnrecipe'] / sps['sb3']:.2f}x")


if __name__ == "__main__":
    main()
