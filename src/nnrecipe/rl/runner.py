"""The RL verbs: train, evaluate, play. Shares recipes, run directories, tracking, checkpoints and plots
with the rest of nnrecipe; the algorithms themselves live in tabular.py, dqn.py, reinforce.py and ppo.py,
the environments in envs.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint, split_prefix, with_prefix
from nnrecipe.engine.config import check_seed
from nnrecipe.engine.loop import console
from nnrecipe.engine.mlflow_tracking import publish
from nnrecipe.engine.recipe_changes import refuse_changes
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError, writable_file
from nnrecipe.rl import gridworld
from nnrecipe.rl.config import RLRecipe
from nnrecipe.rl.dqn import QNetwork, actor_for, train_dqn
from nnrecipe.rl.envs import evaluate_policy, make_env, max_steps, success_rule
from nnrecipe.rl.gif import record_episode, renders_rgb
from nnrecipe.rl.networks import ActorCritic, policy_actions
from nnrecipe.rl.ppo import train_ppo
from nnrecipe.rl.reinforce import train_reinforce
from nnrecipe.rl.tabular import greedy_policy, train_tabular
from nnrecipe.runs import Run

# The deep algorithms: each trains from (make_env, its recipe section, gamma, seed, device, evaluate, on_log,
# on_checkpoint, resume) and returns {"final", "best", "best_return", "best_step", "seconds"}.
DEEP = {"dqn": train_dqn, "ppo": train_ppo, "reinforce": train_reinforce}

Policy = Callable[[Any], int]


class Stopped(Exception):
    """A listener (a tuner's pruner) stopped training after a periodic evaluation."""

    def __init__(self, step: int):
        self.step = step


def hear(listeners, step: int, value: float) -> None:
    """Tell each listener the periodic evaluation's mean return (as the family's validation metric)."""
    if any(cb.after_evaluation(step, {"val_mean_return": float(value)}) for cb in listeners):
        raise Stopped(step)


# -- training ----------------------------------------------------------------------------------------


def train(recipe: RLRecipe, run: Run, *, resume: bool = False, listeners=()) -> dict[str, Any]:
    """`listeners` hear each periodic evaluation (engine Callbacks' `after_evaluation`) and may stop the run."""
    env = make_env(recipe)
    tracker = Tracker.for_recipe(run.dir, recipe)
    run.update_meta(status="running", task=recipe.task, algo=recipe.algo, env=recipe.env.id)
    try:
        with run.failure_recorded("training", expected=(Stopped,)):
            if recipe.algo in DEEP:
                policy, extra = _train_deep(recipe, run, env, tracker, resume, listeners)
            else:
                policy, extra = _train_tabular(recipe, run, env, tracker, resume, listeners)
    except Stopped as stop:
        run.update_meta(status="pruned")
        console.print(f"stopped after the evaluation at {stop.step:,}")
        return {"status": "pruned", "run": str(run.dir), "stopped_at": stop.step}
    except KeyboardInterrupt:  # Ctrl-C: it exited without a word, the run saying "running" for ever
        run.update_meta(status="interrupted")
        then = (f"continue with `nnrecipe resume {run.dir}`" if run.last_checkpoint.is_file()
                else "none was written yet: train again")  # fmt: skip
        console.print(f"interrupted: the last periodic checkpoint is kept; {then}")
        return {"status": "interrupted", "run": str(run.dir)}
    finally:
        tracker.close()
    run.update_meta(status="finished")
    with run.failure_recorded("evaluating"):
        summary = evaluate(run, recipe=recipe, policy=policy)
        if recipe.track.mlflow:
            publish(run.dir, recipe.track.mlflow_uri, "finished")
    return {"status": "finished", "run": str(run.dir), **extra, **summary}


def _train_tabular(recipe: RLRecipe, run: Run, env: gym.Env, tracker: Tracker, resume: bool, listeners):
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
        hear(listeners, row["episode"], row["mean_return"])
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


def _check_spaces(recipe: RLRecipe, env: gym.Env) -> None:
    obs, act = env.observation_space, env.action_space
    box_actions = isinstance(act, gym.spaces.Box) and len(act.shape) == 1
    ok = isinstance(obs, gym.spaces.Box) and (
        isinstance(act, gym.spaces.Discrete) or (box_actions and recipe.algo != "dqn")
    )
    if not ok:
        wants = "discrete actions" if recipe.algo == "dqn" else "discrete or 1-D continuous actions"
        raise UserError(
            f"algo {recipe.algo} needs vector or image observations and {wants}; {recipe.env.id} has "
            f"{obs} / {act}" + (" (use algo: ppo or reinforce for continuous actions)" if box_actions else "")
        )


def _train_deep(recipe: RLRecipe, run: Run, env: gym.Env, tracker: Tracker, resume: bool, listeners):
    _check_spaces(recipe, env)
    cfg = getattr(recipe, recipe.algo)
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    eval_env = make_env(recipe)
    eval_seed = recipe.eval.seed + 1_000_000  # periodic evaluations never reuse the final evaluation's seeds
    replay = run.dir / "checkpoints" / "replay-{step}.npz"
    # the recipe it trains under, kept in each checkpoint for resume to compare with; total_steps may grow
    kept = {"recipe": run.recipe_path.read_text(), "recipe_free": f"{recipe.algo}.total_steps"}

    def periodic(policy) -> float:
        return evaluate_policy(eval_env, policy, cfg.eval_episodes, eval_seed, recipe.env.id)["mean_return"]

    def log(row: dict) -> None:
        tracker.log_epoch({"epoch": row["step"], **row}, step_key="step")
        if recipe.track.progress:
            train_return = row["train_return"] if row["train_return"] is not None else float("nan")
            console.print(
                f"step {row['step']:,}/{cfg.total_steps:,}  eval return {row['eval_return']:.1f}  "
                f"train return {train_return:.1f}  {row['steps_per_s']:,.0f} steps/s"
            )
        hear(listeners, row["step"], row["eval_return"])

    def checkpoint(state: dict) -> None:
        buffer = state.pop("buffer", None)
        if buffer is not None:  # the buffer first, named by its step: the checkpoint then points at it
            state["buffer_whole"] = buffer.save(Path(str(replay).format(step=state["step"])), cfg.buffer_checkpoint_mb)
        save_checkpoint(run.last_checkpoint, {}, state | kept)
        for old in replay.parent.glob("replay-*.npz"):
            if old.name != Path(str(replay).format(step=state["step"])).name:
                old.unlink(missing_ok=True)

    state = _resume_state(run, cfg, replay, device) if resume and run.last_checkpoint.is_file() else None
    if state is not None:
        tracker.keep_epochs_before(state["step"])
    train = DEEP[recipe.algo]
    out = train(
        lambda: make_env(recipe, training=True),
        cfg,
        recipe.gamma,
        recipe.seed,
        device,
        periodic,
        log,
        checkpoint,
        state,
    )
    spec = _policy_spec(recipe, env, cfg, out)
    run.update_meta(policy=spec)
    save_checkpoint(run.best_checkpoint, with_prefix(out["best"].state_dict(), "model"), {"step": out["best_step"]})
    final = evaluate_policy(
        eval_env, _net_policy(out["final"], spec, device), recipe.eval.episodes, recipe.eval.seed, recipe.env.id,
        progress="evaluating the final network" if recipe.track.progress else None,
    )  # fmt: skip
    # The steps taken (PPO runs whole rollouts, past total_steps when it is not a multiple of one), and the
    # speed of this session's steps alone (a resumed run's earlier steps took no time here).
    resumed = f" ({out['session_steps']:,} since the resume)" if out["session_steps"] != out["steps"] else ""
    speed = out["session_steps"] / max(out["seconds"], 1e-9)
    console.print(
        f"{out['steps']:,} steps{resumed} in {out['seconds']:.1f} s ({speed:,.0f} steps/s); "
        f"final network: mean return {final['mean_return']:.1f}; best network (step {out['best_step']:,}) is evaluated below"
    )
    return _net_policy(out["best"], spec, device), {
        "final_network": final,
        "best_step": out["best_step"],
        "train_seconds": out["seconds"],
        "steps": out["steps"],
        "steps_per_s": speed,
    }


def _resume_state(run: Run, cfg, replay: Path, device) -> dict:
    _, state = load_checkpoint(run.last_checkpoint, device=device)
    if not isinstance(state, dict) or "envs" not in state:
        raise UserError(f"{run.last_checkpoint} was written by an older nnrecipe and holds no resumable state")
    refuse_changes(state.get("recipe"), run.recipe_path.read_text(), run.recipe_path, state.get("recipe_free"))
    if state["step"] >= cfg.total_steps:
        raise UserError(f"{run.dir} already trained all {cfg.total_steps:,} steps; nothing to resume")
    exact = True
    if "buffer_whole" in state:
        path = Path(str(replay).format(step=state["step"]))
        state["buffer"] = path if path.is_file() else None
        exact = state["buffer_whole"] and path.is_file()
    console.print(
        f"resuming at step {state['step']:,}"
        + ("" if exact else " (not exactly: the replay buffer was not saved whole, see dqn.buffer_checkpoint_mb)")
    )
    return state


def _policy_spec(recipe: RLRecipe, env: gym.Env, cfg, out: dict) -> dict:
    """What rebuilds the network without the recipe's environment (saved in run.json)."""
    if recipe.algo == "dqn":
        return {
            "algo": "dqn",
            "obs_shape": list(env.observation_space.shape),
            "n_actions": int(env.action_space.n),
            "hidden": cfg.hidden,
        }
    return {"algo": recipe.algo, "hidden": cfg.hidden, **out["spec"]}


def build_network(spec: dict) -> torch.nn.Module:
    if spec.get("algo", "dqn") == "dqn":  # runs before PPO saved "dqn": {"obs_dim", ...}
        return QNetwork(spec.get("obs_shape", spec.get("obs_dim")), spec["n_actions"], spec["hidden"])
    return ActorCritic(**{k: v for k, v in spec.items() if k != "algo"})


def _net_policy(net: torch.nn.Module, spec: dict, device) -> Policy:
    if isinstance(net, ActorCritic):
        return policy_actions(net, spec, device)
    return actor_for(net, device)


# -- evaluation and play -----------------------------------------------------------------------------


def load_policy(run: Run, recipe: RLRecipe) -> Policy:
    tensors, _ = load_checkpoint(run.best_checkpoint)
    if recipe.algo in DEEP:
        meta = run.meta()
        spec = meta.get("policy") or meta["dqn"]
        net = build_network(spec)
        net.load_state_dict(split_prefix(tensors, "model"))
        return _net_policy(net.eval(), spec, "cpu")
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
    summary = evaluate_policy(
        env, policy, episodes or recipe.eval.episodes, recipe.eval.seed, recipe.env.id,
        progress="evaluating" if recipe.track.progress else None,
    )  # fmt: skip
    console.print(
        f"{recipe.env.id}: mean return {summary['mean_return']:.3f} +/- {summary['std_return']:.3f}, "
        f"success rate {summary['success_rate']:.3f}, mean steps {summary['mean_steps']:.1f} "
        f"over {summary['episodes']} episodes (seeds {recipe.eval.seed}..{recipe.eval.seed + summary['episodes'] - 1})"
    )
    plots = _plots(run, recipe, env, policy)
    if recipe.eval.gif and recipe.track.plots and renders_rgb(env):
        record_episode(
            make_env(recipe, render_mode="rgb_array"),
            policy,
            run.plots_dir / "episode.gif",
            recipe.eval.seed,
            recipe.eval.gif_frames,
        )
        plots.append("plots/episode.gif")
    _write_report(run, summary | {"plots": plots})
    return summary


def play(run: Run, render: str | None = None, seed: int | None = None, gif: Path | None = None) -> float:
    """One greedy episode: each frame printed (ansi, the default where the environment has it), shown in a
    window (human), or written as an animated GIF."""
    recipe = run.recipe()
    seed = recipe.eval.seed if check_seed(seed) is None else seed
    modes = list(make_env(recipe).metadata.get("render_modes") or [])
    check_play_options(recipe.env.id, modes, render, gif)
    render = render or "ansi"
    policy = load_policy(run, recipe)
    if gif is not None:
        out = record_episode(make_env(recipe, render_mode="rgb_array"), policy, gif, seed, recipe.eval.gif_frames)
        print(f"return {out['return']:.2f} over {out['steps']} steps; {out['frames']} frames written to {gif}")
        return out["return"]
    env = make_env(recipe, render_mode=render)
    obs, _ = env.reset(seed=seed)
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


def check_play_options(env_id: str, modes: list[str], render: str | None, gif: Path | None) -> None:
    """`rl play`'s --render and --gif against what the environment draws: CartPole, which has no text
    frames, ended in gymnasium's AssertionError under the default ansi, as did any unknown mode."""
    if gif is not None:
        if "rgb_array" not in modes:
            raise UserError(f"--gif: {env_id} does not render images (its render modes: {', '.join(modes) or 'none'})")
        if Path(gif).is_dir() or Path(gif).suffix.lower() != ".gif":  # x.png and a bare name held a GIF
            raise UserError(f"--gif {gif}: give a file name ending in .gif")
        writable_file(Path(gif), "--gif", "nothing played")  # an episode can take minutes (Atari)
        return
    shown = [m for m in modes if m in ("ansi", "human")]
    if render is None and "ansi" not in modes:
        how = " or --render human on a desktop" if "human" in modes else ""
        raise UserError(f"{env_id} draws no text frames: write the episode with --gif episode.gif{how}")
    if render is not None and render not in shown:
        hint = "; rgb_array frames: --gif episode.gif" if "rgb_array" in modes else ""
        raise UserError(f"--render: {env_id} offers {', '.join(shown) or 'no mode to show'} (got {render!r}){hint}")


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
    if "collision_rate" in summary:
        lines += [
            "| collision rate | mean speed (m/s) | lane changes per episode |",
            "|---:|---:|---:|",
            f"| {summary['collision_rate']:.3f} | {summary['mean_speed']:.2f} | {summary['lane_changes_per_episode']:.2f} |",
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
    if rows is not None and run.best_checkpoint.is_file() and recipe.algo not in DEEP:
        q = load_checkpoint(run.best_checkpoint)[0]["q"].numpy()
        start = "".join(rows).index("S")
        path = intended_path(env, policy, start)
        out.append(plot_grid(rows, q.max(axis=1), greedy_policy(q), path, run.plots_dir / "policy.png"))
        console.print(gridworld.draw_path(rows, path, greedy_policy(q)))
    return [str(Path(p).relative_to(run.dir)) for p in out]
