"""The RL verbs: train, evaluate, play. Shares recipes, run directories, tracking, checkpoints and plots
with the rest of nnrecipe; the algorithms themselves live in tabular.py and dqn.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint, split_prefix, with_prefix
from nnrecipe.engine.loop import console
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.rl import gridworld
from nnrecipe.rl.config import RLRecipe
from nnrecipe.rl.dqn import QNetwork, train_dqn
from nnrecipe.rl.tabular import greedy_policy, train_tabular
from nnrecipe.runs import Run

Policy = Callable[[Any], int]


# -- environments ------------------------------------------------------------------------------------


def make_env(recipe: RLRecipe, render_mode: str | None = None) -> gym.Env:
    cfg = recipe.env
    gridworld.register()
    limit = {"max_episode_steps": cfg.max_steps} if cfg.max_steps else {}
    try:
        if cfg.id == "gridmap":
            limit.setdefault("max_episode_steps", 200)
            return gym.make(
                gridworld.ENV_ID,
                map=cfg.map,
                slip=cfg.slip,
                step_reward=cfg.step_reward,
                goal_reward=cfg.goal_reward,
                hazard_reward=cfg.hazard_reward,
                render_mode=render_mode,
                **limit,
            )
        return gym.make(cfg.id, render_mode=render_mode, **cfg.kwargs, **limit)
    except gym.error.Error as e:
        raise UserError(f"env.id: cannot make {cfg.id!r}: {e}") from None
    except TypeError as e:
        raise UserError(f"env.kwargs: {e}") from None


def max_steps(env: gym.Env) -> int:
    return (env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else None) or 1000


def success_rule(env_id: str) -> Callable[[bool, bool, float, dict], bool]:
    """What counts as a successful episode: reaching the goal, or surviving (CartPole)."""
    if env_id.startswith("CartPole"):
        return lambda term, trunc, r, info: trunc and not term
    if env_id.startswith(("CliffWalking", "Acrobot", "MountainCar")):
        return lambda term, trunc, r, info: term
    return lambda term, trunc, r, info: bool(info.get("success", term and r > 0))


def evaluate_policy(env: gym.Env, policy: Policy, episodes: int, seed: int, env_id: str) -> dict[str, Any]:
    """Greedy episodes reset with seeds seed, seed+1, ...: the same list for every run and every tool."""
    success = success_rule(env_id)
    returns, steps, wins = [], [], 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, n = 0.0, 0
        while True:
            obs, r, term, trunc, info = env.step(policy(obs))
            total, n = total + float(r), n + 1
            if term or trunc:
                wins += success(term, trunc, r, info)
                break
        returns.append(total)
        steps.append(n)
    return {
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "success_rate": wins / episodes,
        "mean_steps": float(np.mean(steps)),
        "first_seed": seed,
    }


# -- training ----------------------------------------------------------------------------------------


def train(recipe: RLRecipe, run: Run, *, resume: bool = False) -> dict[str, Any]:
    env = make_env(recipe)
    tracker = Tracker(run.dir, recipe.track.tensorboard, recipe.track.wandb, recipe.model_dump(mode="json"))
    run.update_meta(status="running", task=recipe.task, algo=recipe.algo, env=recipe.env.id)
    try:
        if recipe.algo == "dqn":
            policy, extra = _train_dqn(recipe, run, env, tracker, resume)
        else:
            policy, extra = _train_tabular(recipe, run, env, tracker, resume)
    finally:
        tracker.close()
    run.update_meta(status="finished")
    summary = evaluate(run, recipe=recipe, policy=policy)
    return {"status": "finished", "run": str(run.dir), **extra, **summary}


def _train_tabular(recipe: RLRecipe, run: Run, env: gym.Env, tracker: Tracker, resume: bool):
    if not isinstance(env.observation_space, gym.spaces.Discrete) or not isinstance(
        env.action_space, gym.spaces.Discrete
    ):
        raise UserError(
            f"algo {recipe.algo} needs discrete observations and actions; {recipe.env.id} has "
            f"{env.observation_space}. Use algo: dqn for vector observations."
        )
    q, first = None, 0
    if resume and run.last_checkpoint.is_file():
        tensors, state = load_checkpoint(run.last_checkpoint)
        q, first = tensors["q"].numpy(), state["episode"]
        tracker.keep_epochs_before(first)  # rows are keyed "epoch" = episode count
        console.print(f"resuming at episode {first:,}")

    def log(row: dict) -> None:
        table = np.asarray(row.pop("q"))
        row = {"epoch": row["episode"], **row}
        tracker.log_epoch(row, step_key="episode")
        save_checkpoint(run.last_checkpoint, {"q": torch.from_numpy(table)}, {"episode": row["episode"]})
        if recipe.track.progress:
            console.print(
                f"episode {row['episode']:,}/{recipe.tabular.episodes:,}  mean return {row['mean_return']:.3f}  "
                f"success {row['success_rate']:.3f}  epsilon {row['epsilon']:.3f}  alpha {row['alpha']:.3f}"
            )

    import time

    start = time.perf_counter()
    q, updates = train_tabular(
        env,
        recipe.algo,
        recipe.tabular,
        recipe.gamma,
        recipe.seed,
        max_steps(env),
        q,
        first,
        log,
        success_rule(recipe.env.id),
    )
    seconds = time.perf_counter() - start
    save_checkpoint(run.best_checkpoint, {"q": torch.from_numpy(q)}, {"episode": recipe.tabular.episodes})
    save_checkpoint(run.last_checkpoint, {"q": torch.from_numpy(q)}, {"episode": recipe.tabular.episodes})
    console.print(f"{updates:,} updates in {seconds:.1f} s ({updates / max(seconds, 1e-9):,.0f} updates/s)")
    policy = greedy_policy(q)
    return (lambda s: int(policy[s])), {
        "updates": updates,
        "updates_per_s": updates / max(seconds, 1e-9),
        "train_seconds": seconds,
    }


def _train_dqn(recipe: RLRecipe, run: Run, env: gym.Env, tracker: Tracker, resume: bool):
    if not isinstance(env.action_space, gym.spaces.Discrete) or not isinstance(env.observation_space, gym.spaces.Box):
        raise UserError(
            f"algo dqn needs vector observations and discrete actions; {recipe.env.id} has "
            f"{env.observation_space} / {env.action_space}"
        )
    cfg = recipe.dqn
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    eval_env = make_env(recipe)
    eval_seed = recipe.eval.seed + 1_000_000  # periodic evaluations never reuse the final evaluation's seeds

    def periodic(policy) -> float:
        return evaluate_policy(eval_env, policy, cfg.eval_episodes, eval_seed, recipe.env.id)["mean_return"]

    def log(row: dict) -> None:
        tracker.log_epoch({"epoch": row["step"], **row}, step_key="step")
        if recipe.track.progress:
            console.print(
                f"step {row['step']:,}/{cfg.total_steps:,}  eval return {row['eval_return']:.1f}  "
                f"train return {row['train_return'] if row['train_return'] is not None else float('nan'):.1f}  "
                f"epsilon {row['epsilon']:.3f}  {row['steps_per_s']:,.0f} steps/s"
            )

    state = None
    if resume and run.last_checkpoint.is_file():
        tensors, meta = load_checkpoint(run.last_checkpoint, device=device)
        if meta.get("step", cfg.total_steps) >= cfg.total_steps:
            raise UserError(f"{run.dir} already trained all {cfg.total_steps:,} steps; nothing to resume")
        state = {k: split_prefix(tensors, k) for k in ("q", "target", "best")} | meta
        tracker.keep_epochs_before(state["step"])
        console.print(f"resuming at step {state['step']:,} (the replay buffer refills first: it is not checkpointed)")

    def checkpoint(st: dict) -> None:
        tensors = {f"{k}.{n}": t for k in ("q", "target", "best") for n, t in st[k].items()}
        save_checkpoint(
            run.last_checkpoint,
            tensors,
            {k: st[k] for k in ("step", "gradient_steps", "optimizer", "best_return", "best_step")},
        )

    out = train_dqn(lambda: make_env(recipe), cfg, recipe.gamma, recipe.seed, device, periodic, log, checkpoint, state)
    spec = {
        "obs_dim": int(np.prod(env.observation_space.shape)),
        "n_actions": int(env.action_space.n),
        "hidden": cfg.hidden,
    }
    run.update_meta(dqn=spec)
    save_checkpoint(run.best_checkpoint, with_prefix(out["best"].state_dict(), "model"), {"step": out["best_step"]})
    final = evaluate_policy(
        eval_env, _net_policy(out["final"], device), recipe.eval.episodes, recipe.eval.seed, recipe.env.id
    )
    console.print(
        f"{cfg.total_steps:,} steps in {out['seconds']:.1f} s ({cfg.total_steps / out['seconds']:,.0f} steps/s); "
        f"final network: mean return {final['mean_return']:.1f}; best network (step {out['best_step']:,}) is evaluated below"
    )
    return _net_policy(out["best"], device), {
        "final_network": final,
        "best_step": out["best_step"],
        "train_seconds": out["seconds"],
        "steps_per_s": cfg.total_steps / out["seconds"],
    }


def _net_policy(net: torch.nn.Module, device) -> Policy:
    def act(obs) -> int:
        with torch.no_grad():
            return int(net(torch.as_tensor(np.asarray(obs, np.float32), device=device).unsqueeze(0)).argmax(1).item())

    return act


# -- evaluation and play -----------------------------------------------------------------------------


def load_policy(run: Run, recipe: RLRecipe) -> Policy:
    tensors, _ = load_checkpoint(run.best_checkpoint)
    if recipe.algo == "dqn":
        spec = run.meta()["dqn"]
        net = QNetwork(spec["obs_dim"], spec["n_actions"], spec["hidden"])
        net.load_state_dict(split_prefix(tensors, "model"))
        return _net_policy(net.eval(), "cpu")
    policy = greedy_policy(tensors["q"].numpy())
    return lambda s: int(policy[s])


def evaluate(
    run: Run, episodes: int | None = None, recipe: RLRecipe | None = None, policy: Policy | None = None
) -> dict[str, Any]:
    """Greedy evaluation on the fixed seed list; prints and writes report.json/.md and the plots."""
    recipe = recipe or run.recipe()
    if policy is None:
        if not run.best_checkpoint.is_file():
            raise UserError(f"{run.dir} has no trained policy yet (no checkpoints/best.safetensors)")
        policy = load_policy(run, recipe)
    env = make_env(recipe)
    summary = evaluate_policy(env, policy, episodes or recipe.eval.episodes, recipe.eval.seed, recipe.env.id)
    console.print(
        f"{recipe.env.id}: mean return {summary['mean_return']:.3f} +/- {summary['std_return']:.3f}, "
        f"success rate {summary['success_rate']:.3f}, mean steps {summary['mean_steps']:.1f} "
        f"over {summary['episodes']} episodes (seeds {recipe.eval.seed}..{recipe.eval.seed + summary['episodes'] - 1})"
    )
    plots = _plots(run, recipe, env, policy)
    _write_report(run, summary | {"plots": plots})
    return summary


def play(run: Run, render: str = "ansi", seed: int | None = None) -> float:
    """One greedy episode, each frame printed (ansi)."""
    recipe = run.recipe()
    policy = load_policy(run, recipe)
    env = make_env(recipe, render_mode=render)
    obs, _ = env.reset(seed=recipe.eval.seed if seed is None else seed)
    total = 0.0
    while True:
        frame = env.render()
        if isinstance(frame, str):
            print(frame)
        obs, r, term, trunc, _ = env.step(policy(obs))
        total += float(r)
        if term or trunc:
            frame = env.render()
            if isinstance(frame, str):
                print(frame)
            print(f"return {total:.2f} ({'terminated' if term else 'truncated'})")
            return total


def _write_report(run: Run, summary: dict[str, Any]) -> None:
    import json

    (run.dir / "report.json").write_text(json.dumps({"evaluation": summary}, indent=2))
    lines = [
        f"# Report: {run.dir.name}",
        "",
        "| mean return | std | success rate | mean steps | episodes |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary['mean_return']:.3f} | {summary['std_return']:.3f} | {summary['success_rate']:.3f} | "
        f"{summary['mean_steps']:.1f} | {summary['episodes']} |",
        "",
    ]
    lines += [f"![{p}]({p})" for p in summary.get("plots", [])]
    (run.dir / "report.md").write_text("\n".join(lines) + "\n")


# -- pictures of grid worlds -------------------------------------------------------------------------


def grid_rows(env: gym.Env) -> list[str] | None:
    """The map of a 2-D grid environment in gridworld's characters, or None for other environments."""
    game = env.unwrapped
    if isinstance(game, gridworld.GridMapEnv):
        return game.rows
    if hasattr(game, "desc"):  # FrozenLake: S F H G
        return ["".join(c.decode() for c in row).replace("F", ".").replace("H", "~") for row in game.desc]
    if type(game).__name__ == "CliffWalkingEnv":
        nrow, ncol = game.shape
        rows = [["." for _ in range(ncol)] for _ in range(nrow)]
        for r, c in zip(*np.nonzero(game._cliff)):
            rows[r][c] = "~"
        rows[-1][0], rows[-1][-1] = "S", "G"
        return ["".join(r) for r in rows]
    return None


def intended_path(env: gym.Env, policy: Policy, start: int, limit: int = 500) -> list[int]:
    """Follow the policy through each action's most likely outcome (the path it aims for)."""
    P, s, path = env.unwrapped.P, start, [start]
    for _ in range(limit):
        prob, s2, _, done = max(P[s][policy(s)], key=lambda o: o[0])
        path.append(s2)
        if done or s2 in path[:-1]:
            break
        s = s2
    return path


def _plots(run: Run, recipe: RLRecipe, env: gym.Env, policy: Policy) -> list[str]:
    from nnrecipe.engine.tracking import read_metrics
    from nnrecipe.rl.plots import plot_grid, plot_returns

    if not recipe.track.plots:
        return []
    out = []
    history = read_metrics(run.dir / "metrics.jsonl")
    if history:
        out.append(plot_returns(history, run.plots_dir / "returns.png"))
    rows = grid_rows(env)
    if rows is not None and run.best_checkpoint.is_file() and recipe.algo != "dqn":
        q = load_checkpoint(run.best_checkpoint)[0]["q"].numpy()
        start = "".join(rows).index("S")
        path = intended_path(env, policy, start)
        out.append(plot_grid(rows, q.max(axis=1), greedy_policy(q), path, run.plots_dir / "policy.png"))
        console.print(gridworld.draw_path(rows, path, greedy_policy(q)))
    return [str(Path(p).relative_to(run.dir)) for p in out]
