"""RL: tabular learning against value iteration, the classic targets, the grid world, DQN, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import load_recipe, validate_recipe
from nnrecipe.rl import gridworld, runner
from nnrecipe.rl.planning import value_iteration
from nnrecipe.rl.tabular import greedy_policy, train_tabular

ROOT = Path(__file__).resolve().parents[1]

MAZE = """
S..#....
.#.#.##.
.#...#..
.####.#.
......#G
"""


def shortest_path_length(text: str) -> int:
    """Breadth-first search from S to G: the oracle for path planning."""
    rows = gridworld.read_map(text)
    start = next((r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch == "S")
    frontier, seen, dist = [start], {start}, 0
    while frontier:
        nxt = []
        for r, c in frontier:
            if rows[r][c] == "G":
                return dist
            for dr, dc in gridworld.MOVES.values():
                r2, c2 = r + dr, c + dc
                if 0 <= r2 < len(rows) and 0 <= c2 < len(rows[0]) and rows[r2][c2] not in "#~" and (r2, c2) not in seen:
                    seen.add((r2, c2))
                    nxt.append((r2, c2))
        frontier, dist = nxt, dist + 1
    raise AssertionError("no path")


def rl_recipe(tmp_path, **fields):
    raw = {"task": "rl", "track": {"runs_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False}}
    for key, value in fields.items():
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate_recipe(raw)


def test_q_learning_converges_to_the_value_iteration_optimum_on_a_deterministic_grid(tmp_path):
    recipe = rl_recipe(
        tmp_path,
        env__id="gridmap",
        env__map=MAZE,
        tabular__episodes=3000,
        tabular__alpha=0.5,
        tabular__alpha_end=0.5,
        tabular__epsilon_end=0.3,
        tabular__epsilon_decay_fraction=0.3,
        gamma=0.95,
    )
    env = runner.make_env(recipe)
    q, _ = train_tabular(env, "qlearning", recipe.tabular, recipe.gamma, seed=0, max_steps=200)
    game = env.unwrapped
    q_star = value_iteration(game.P, game.observation_space.n, 4, recipe.gamma)
    free = [s for s in range(game.observation_space.n) if game.cell(s) in "S."]
    np.testing.assert_allclose(q[free], q_star[free], atol=1e-2)
    policy = greedy_policy(q)
    for s in free:  # greedy action is optimal under Q* (ties allowed)
        assert q_star[s, policy[s]] == pytest.approx(q_star[s].max(), abs=1e-9)
    path = runner.intended_path(env, lambda s: int(policy[s]), game.start)
    assert game.cell(path[-1]) == "G" and len(path) - 1 == shortest_path_length(MAZE)


@pytest.mark.parametrize("algo", ["sarsa", "expected_sarsa"])
def test_sarsa_variants_reach_the_goal_on_the_shortest_path(tmp_path, algo):
    recipe = rl_recipe(
        tmp_path,
        env__id="gridmap",
        env__map=MAZE,
        algo=algo,
        tabular__episodes=1500,
        tabular__alpha=0.5,
        tabular__epsilon_end=0.0,
        tabular__epsilon_decay_fraction=0.7,
    )
    env = runner.make_env(recipe)
    q, _ = train_tabular(env, algo, recipe.tabular, recipe.gamma, seed=1, max_steps=200)
    result = runner.evaluate_policy(env, lambda s: int(greedy_policy(q)[s]), 5, 0, "gridmap")
    assert result["success_rate"] == 1.0 and result["mean_steps"] == shortest_path_length(MAZE)


def test_frozenlake_slippery_success_rate_is_near_optimal(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes/frozenlake-qlearning.yaml", [f"track.runs_dir={tmp_path}", "track.progress=false"]
    )
    env = runner.make_env(recipe)
    q, _ = train_tabular(env, "qlearning", recipe.tabular, recipe.gamma, seed=0, max_steps=runner.max_steps(env))
    result = runner.evaluate_policy(env, lambda s: int(greedy_policy(q)[s]), 1000, 10_000, "FrozenLake-v1")
    assert result["success_rate"] >= 0.70


def test_a_terminal_shows_a_bar_over_the_evaluation_episodes(tmp_path, monkeypatch):
    """`rl evaluate` of 20 Atari episodes ran for minutes without a sign of life; the bar changes no result."""
    import io

    from rich.console import Console

    from nnrecipe.engine import loop

    recipe = load_recipe(ROOT / "recipes/frozenlake-qlearning.yaml", [f"track.runs_dir={tmp_path}"])
    env = runner.make_env(recipe)
    quiet = runner.evaluate_policy(env, lambda s: 2, 30, 10_000, "FrozenLake-v1")
    out = io.StringIO()
    monkeypatch.setattr(loop, "console", Console(file=out, force_terminal=True, width=80))
    shown = runner.evaluate_policy(env, lambda s: 2, 30, 10_000, "FrozenLake-v1", progress="evaluating")
    assert shown == quiet and "evaluating" in out.getvalue() and "30/30" in out.getvalue()


def test_taxi_mean_return_above_seven(tmp_path):
    recipe = load_recipe(ROOT / "recipes/taxi-qlearning.yaml", [f"track.runs_dir={tmp_path}"])
    env = runner.make_env(recipe)
    q, _ = train_tabular(env, "qlearning", recipe.tabular, recipe.gamma, seed=0, max_steps=runner.max_steps(env))
    assert runner.evaluate_policy(env, lambda s: int(greedy_policy(q)[s]), 100, 10_000, "Taxi-v4")["mean_return"] >= 7


def test_termination_is_not_bootstrapped_but_truncation_is(tmp_path):
    """One-step chain S -> G: Q(S, right) must equal the goal reward exactly, not reward + gamma * Q(G)."""
    recipe = rl_recipe(
        tmp_path,
        env__id="gridmap",
        env__map="SG\n",
        env__step_reward=0.0,
        env__goal_reward=1.0,
        tabular__episodes=200,
        tabular__alpha=1.0,
        tabular__alpha_end=1.0,
        tabular__q_init=5.0,
    )
    env = runner.make_env(recipe)
    q, _ = train_tabular(env, "qlearning", recipe.tabular, 0.9, seed=0, max_steps=50)
    assert q[0, 2] == pytest.approx(1.0)  # terminal: target is r alone, although Q(G, .) was initialised to 5
    # A 1-step time limit truncates every episode after a bump; the target then bootstraps from Q(s').
    recipe = rl_recipe(
        tmp_path,
        env__id="gridmap",
        env__map="S.G\n",
        env__step_reward=0.0,
        env__goal_reward=1.0,
        tabular__episodes=400,
        tabular__alpha=1.0,
        tabular__alpha_end=1.0,
    )
    q, _ = train_tabular(runner.make_env(recipe), "qlearning", recipe.tabular, 0.9, seed=0, max_steps=1)
    assert q[0, 2] == pytest.approx(0.0)  # Q(middle) was never updated (episodes cut after 1 step): 0.9 * 0
    q, _ = train_tabular(runner.make_env(recipe), "qlearning", recipe.tabular, 0.9, seed=0, max_steps=2)
    assert q[0, 2] == pytest.approx(0.9)  # bootstrapped through the truncation point


def test_bad_maps_and_envs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="exactly one S"):
        gridworld.read_map("..G\n...")
    with pytest.raises(UserError, match="unknown cells 'x'"):
        gridworld.read_map("S.x\n..G")
    for walled in ("S#G\n.#.", "S~.\n~.G"):  # trained an agent that could never reach the goal, silently
        with pytest.raises(UserError, match="no G can be reached from S"):
            gridworld.read_map(walled)
    assert gridworld.read_map("S#G\n...") == ["S#G", "..."]  # around the wall
    with pytest.raises(UserError, match="env.map: map file not found"):
        gridworld.read_map(str(tmp_path / "missing.txt"))
    with pytest.raises(RecipeError, match="env.map is required"):
        rl_recipe(tmp_path, env__id="gridmap")
    with pytest.raises(UserError, match="env.id: cannot make 'NoSuchEnv-v9'"):
        runner.make_env(rl_recipe(tmp_path, env__id="NoSuchEnv-v9"))
    recipe = rl_recipe(tmp_path, env__id="CartPole-v1", algo="qlearning")
    with pytest.raises(UserError, match="needs discrete observations.*Use algo: dqn"):
        runner.train(recipe, _run(recipe))
    for fields, why in (
        ({"learning_starts": 5000}, "at or past total_steps"),
        ({"buffer_size": 32}, "more than buffer_size"),
    ):
        with pytest.raises(RecipeError, match=rf"recipe error: dqn: learning starts at .* {why}"):  # trained nothing
            rl_recipe(tmp_path, env__id="CartPole-v1", algo="dqn", **{f"dqn__{k}": v for k, v in fields.items()},
                      dqn__total_steps=3000)  # fmt: skip


def _run(recipe):
    from nnrecipe.runs import create_run

    return create_run(recipe, "rl")


def test_dqn_learns_cartpole(tmp_path):
    """A short DQN run must clearly beat the random policy (about 22) - the full solve is in bench/RESULTS.md."""
    recipe = load_recipe(
        ROOT / "recipes/cartpole-dqn.yaml",
        [
            f"track.runs_dir={tmp_path}",
            "track.progress=false",
            "dqn.total_steps=12000",
            "dqn.eval_every=3000",
            "eval.episodes=5",
            "dqn.gradient_steps=64",
            "track.tensorboard=false",
        ],
    )
    result = runner.train(recipe, _run(recipe))
    assert result["mean_return"] >= 100


def test_double_dqn_with_soft_target_updates_learns(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes/cartpole-dqn.yaml",
        [
            f"track.runs_dir={tmp_path}",
            "track.progress=false",
            "dqn.total_steps=12000",
            "dqn.eval_every=3000",
            "eval.episodes=5",
            "dqn.gradient_steps=64",
            "track.tensorboard=false",
            "dqn.double=true",
            "dqn.tau=0.5",
            "dqn.num_envs=2",
            "dqn.vector=async",
        ],
    )
    result = runner.train(recipe, _run(recipe))
    assert result["mean_return"] >= 60


def test_gridmap_recipe_end_to_end_through_the_cli(tmp_path):
    env = {"PYTHONWARNINGS": "ignore"}
    import os

    def cli(*args):
        res = subprocess.run(
            [sys.executable, "-m", "nnrecipe.cli", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=os.environ | env,
            timeout=300,
        )
        assert "Traceback" not in res.stderr, res.stderr
        return res

    res = cli("rl", "train", ROOT / "recipes/gridmap-qlearning.yaml", "--set", f"track.runs_dir={tmp_path / 'runs'}")
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())["evaluation"]
    assert report["success_rate"] == 1.0
    assert (run / "plots" / "policy.png").stat().st_size > 1000 and (run / "plots" / "returns.png").is_file()
    assert "*" in res.stderr  # the path drawn on the map in the terminal
    res = cli("rl", "evaluate", run, "--episodes", "3")
    assert res.returncode == 0 and "mean return" in res.stderr
    res = cli("rl", "play", run)
    assert res.returncode == 0 and "A" in res.stdout and "return" in res.stdout
    res = cli("rl", "play", run, "--seed", "-1")  # was gymnasium's traceback
    assert res.returncode == 2 and "--seed: a seed from 0 to 4294967295 (got -1)" in res.stderr
    res = cli("rl", "train", ROOT / "recipes/digits-convnet.yaml")
    assert res.returncode == 1 and "not an RL recipe" in res.stderr


def test_dqn_resume_continues_from_the_last_checkpoint(tmp_path):
    """A run trained to 3,000 steps, then asked for 6,000: resume picks up at 3,000 with its networks."""
    from nnrecipe.engine.checkpoint import load_checkpoint
    from nnrecipe.engine.tracking import read_metrics
    from nnrecipe.runs import open_run

    recipe = load_recipe(
        ROOT / "recipes/cartpole-dqn.yaml",
        [
            f"track.runs_dir={tmp_path}",
            "track.progress=false",
            "dqn.total_steps=3000",
            "dqn.eval_every=1500",
            "eval.episodes=2",
            "dqn.learning_starts=500",
            "dqn.gradient_steps=16",
            "track.tensorboard=false",
            "track.plots=false",
        ],
    )
    run = _run(recipe)
    runner.train(recipe, run)
    before, meta = load_checkpoint(run.last_checkpoint)
    assert meta["step"] == 3000 and meta["gradient_steps"] > 0
    original = run.recipe_path.read_text()
    run.recipe_path.write_text(original.replace("total_steps: 3000", "total_steps: 6000").replace("- 256", "- 64"))
    with pytest.raises(UserError, match=r"changed since the checkpoint: dqn.hidden: \[256, 256\] -> \[64, 64\]\."):
        runner.train(open_run(run.dir).recipe(), run, resume=True)  # was load_state_dict's traceback
    run.recipe_path.write_text(original.replace("total_steps: 3000", "total_steps: 6000"))  # may grow
    resumed = open_run(run.dir).recipe()
    out = runner.train(resumed, run, resume=True)
    # the run's steps, and a speed over this session's 3,000 (it divided all 6,000 by this session's time)
    assert out["steps"] == 6000 and out["steps_per_s"] == pytest.approx(3000 / out["train_seconds"])
    after, meta2 = load_checkpoint(run.last_checkpoint)
    assert meta2["step"] == 6000 and meta2["gradient_steps"] > meta["gradient_steps"]
    assert [r["step"] for r in read_metrics(run.dir / "metrics.jsonl")] == [1500, 3000, 4500, 6000]
    with pytest.raises(UserError, match="already trained all 6,000 steps"):
        runner.train(resumed, run, resume=True)


def test_dqn_flushes_subnormal_floats_while_training_only(tmp_path):
    """Adam moments of dead units decay into subnormal floats, which made the fused Adam step ~5x slower
    late in a CartPole run; training flushes them, and leaves the process's setting as it found it."""
    import torch

    from nnrecipe.rl.dqn import train_dqn

    recipe = load_recipe(
        ROOT / "recipes/cartpole-dqn.yaml",
        ["dqn.total_steps=1300", "dqn.eval_every=1200", "dqn.gradient_steps=4", "dqn.eval_episodes=1"],
    )
    tiny = torch.tensor([1e-40])  # subnormal in float32
    seen = []
    train_dqn(
        lambda: runner.make_env(recipe),
        recipe.dqn,
        recipe.gamma,
        0,
        torch.device("cpu"),
        lambda policy: 0.0,
        lambda row: seen.append(float((tiny * 1.0)[0])),
    )
    assert seen and all(v == 0.0 for v in seen)
    assert float((tiny * 1.0)[0]) > 0.0


def test_rl_evaluate_and_play_name_a_run_of_another_family(trained_digits_run):
    """An image run given to `rl evaluate` or `rl play` ended in AttributeError: no attribute 'algo'."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    for verb in ("evaluate", "play"):
        with pytest.raises(
            UserError, match=r"is a run of image_classification, not an RL run; use `nnrecipe evaluate`"
        ):
            CliRunner().invoke(app, ["rl", verb, str(trained_digits_run.dir)], catch_exceptions=False)


def test_play_options_are_checked_against_what_the_environment_draws(tmp_path):
    """`rl play` on CartPole (no text frames) ended in gymnasium's AssertionError under the default ansi, as
    did any unknown --render; --gif x.png or a bare name wrote a GIF under that name."""
    cartpole, grid = ["human", "rgb_array"], ["ansi"]
    runner.check_play_options("FrozenLake-v1", ["human", "ansi", "rgb_array"], None, None)
    runner.check_play_options("CartPole-v1", cartpole, "human", None)
    runner.check_play_options("CartPole-v1", cartpole, None, tmp_path / "episode.GIF")
    for modes, render, gif, message in (
        (
            cartpole,
            None,
            None,
            "CartPole-v1 draws no text frames: write the episode with --gif episode.gif or --render",
        ),
        (cartpole, "foo", None, r"--render: CartPole-v1 offers human \(got 'foo'\); rgb_array frames: --gif"),
        (cartpole, "rgb_array", None, r"--render: CartPole-v1 offers human \(got 'rgb_array'\)"),
        (grid, "human", None, r"--render: CartPole-v1 offers ansi \(got 'human'\)$"),
        (grid, None, Path("e.gif"), r"--gif: CartPole-v1 does not render images \(its render modes: ansi\)"),
        (cartpole, None, Path("e.png"), "--gif e.png: give a file name ending in .gif"),
        (cartpole, None, Path("episode"), "--gif episode: give a file name ending in .gif"),
    ):
        with pytest.raises(UserError, match=message):
            runner.check_play_options("CartPole-v1", modes, render, gif)


def test_a_gif_that_cannot_be_written_is_named_before_the_episode_is_played(tmp_path):
    """`rl play --gif` played the whole episode (minutes on Atari), then failed naming its hidden temporary file."""
    import gymnasium as gym

    from nnrecipe.rl.gif import record_episode

    (tmp_path / "a-file").write_text("")
    for gif, why in ((tmp_path / "a-file" / "e.gif", ".*a-file is a file"), (Path("/proc/e.gif"), "No such file")):
        with pytest.raises(UserError, match=rf"--gif {gif}: cannot write there \({why}.*\); nothing played$"):
            runner.check_play_options("CartPole-v1", ["rgb_array"], None, gif)
    runner.check_play_options("CartPole-v1", ["rgb_array"], None, tmp_path / "new" / "e.gif")
    out = record_episode(gym.make("CartPole-v1", render_mode="rgb_array"), lambda obs: 0, tmp_path / "e.gif", seed=0)
    assert out["steps"] > 0 and (tmp_path / "e.gif").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "e.gif", "new"]  # no temporary or probe file


def test_explain_on_an_rl_run_says_it_is_not_offered_before_asking_for_inputs(tmp_path):
    """`explain runs/<rl run>` said "nothing to explain: give image files or texts", and made --out first."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    recipe = rl_recipe(tmp_path, env__id="gridmap", env__map="S.G\n", tabular__episodes=20)
    run = _run(recipe)
    runner.train(recipe, run)
    with pytest.raises(UserError, match=r"rl: no explanations for rl runs \(offered for image_classification"):
        CliRunner().invoke(app, ["explain", str(run.dir), "--out", str(tmp_path / "x")], catch_exceptions=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="--split test: an RL run has no data splits"):  # was ignored
        CliRunner().invoke(app, ["evaluate", str(run.dir), "--split", "test"], catch_exceptions=False)


def test_ctrl_c_marks_the_run_interrupted_keeps_its_checkpoint_and_resume_goes_on(tmp_path):
    """Ctrl-C exited without a word and left run.json saying "running" for ever."""
    from nnrecipe.engine.loop import Callback

    class CtrlC(Callback):
        def after_evaluation(self, step, metrics):
            if step == 100:
                raise KeyboardInterrupt

    recipe = rl_recipe(tmp_path, env__id="gridmap", env__map=MAZE, tabular__episodes=200, tabular__log_every=100,
                       eval__episodes=2)  # fmt: skip
    run = _run(recipe)
    assert runner.train(recipe, run, listeners=[CtrlC()])["status"] == "interrupted"
    assert run.meta()["status"] == "interrupted" and run.last_checkpoint.is_file()
    assert runner.train(recipe, run, resume=True)["status"] == "finished"
