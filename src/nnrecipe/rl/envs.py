"""Environments for every RL algorithm: the factory (gymnasium ids, Atari through ale-py with the standard
preprocessing, highway-env, the grid world), and vector environments whose episodes are seeded one by one
so that a run can be checkpointed and resumed exactly.

Exact resume without pickling an environment: every episode of sub-environment i is reset with its own
seed drawn from (run seed, i, episode number), and gymnasium environments take all their randomness from
that seed. The checkpoint holds each sub-environment's episode number and the actions taken so far in the
current episode; resuming resets with the same seed and replays those actions, which rebuilds the state.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from nnrecipe.engine.progress import progress as progress_bar
from nnrecipe.errors import UserError
from nnrecipe.rl import gridworld

# Environment ids that another package registers on import, and the package that provides them.
_PROVIDERS = (
    (("ALE/",), "ale_py", "ale-py (its wheel ships the Atari ROMs)"),
    (
        ("highway", "merge-", "roundabout-", "intersection-", "parking-", "racetrack-", "two-way-", "u-turn-", "exit-"),
        "highway_env",
        "highway-env",
    ),
)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def is_highway(env_id: str) -> bool:
    return any(env_id.startswith(p) for p in _PROVIDERS[1][0])


def _import_provider(env_id: str) -> None:
    for prefixes, module, package in _PROVIDERS:
        if env_id.startswith(prefixes):
            try:
                gym.register_envs(importlib.import_module(module))
            except ImportError:
                raise UserError(
                    f"env.id {env_id!r} needs the package {package}: pip install 'nnrecipe[rl]' (or {module.replace('_', '-')})"
                ) from None


def make_env(recipe, render_mode: str | None = None, training: bool = False) -> gym.Env:
    """One environment of the recipe. `training` adds what only training wants (Atari: episode end on a
    lost life and rewards clipped to their sign); evaluation always plays whole games on raw scores."""
    cfg = recipe.env
    if render_mode == "rgb_array":
        # Environments drawn with pygame (FrozenLake, CartPole... for the report's GIF) start SDL's audio
        # and video, which on a machine without a desktop session printed "error: XDG_RUNTIME_DIR is
        # invalid" as a run that went well ended. Images need neither; a user's own settings win.
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    gridworld.register()
    _import_provider(cfg.id)
    limit = {"max_episode_steps": cfg.max_steps} if cfg.max_steps else {}
    kwargs = dict(cfg.kwargs)
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
        if is_atari(cfg.id):
            kwargs["frameskip"] = 1  # AtariPreprocessing skips frames itself (and max-pools the last two)
            kwargs.setdefault("repeat_action_probability", cfg.atari.sticky_actions)
        env = gym.make(cfg.id, render_mode=render_mode, **kwargs, **limit)
    except gym.error.Error as e:
        raise UserError(f"env.id: cannot make {cfg.id!r}: {e}") from None
    except TypeError as e:
        raise UserError(f"env.kwargs: {e}") from None
    if is_atari(cfg.id):
        env = _atari(env, cfg.atari, training)
    return env


class SeedWithoutReload(gym.Wrapper):
    """A seeded reset of an ALE game that does not reload its ROM. ale-py reloads it on every reset(seed=...)
    (about 100 ms, against 7 ms for the reset itself), and SeededEpisodes seeds every episode so that a run
    resumes exactly: on Breakout, whose training episodes end at each lost life, the reloads took 82% of the
    environment's time under a random policy. The reload only applies the seed to the emulator's own random
    generator, which draws for sticky actions (and, as checked frame by frame on Pong and Breakout, for
    nothing else), so make_env uses this wrapper when they are off; the game's np_random (no-op starts) is
    seeded as before, and the episodes are the same frame for frame (tests/test_rl_deep.py)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            return self.env.reset(options=options)
        seeded = self.env.unwrapped.seed_game(seed)  # the game's np_random, as reset(seed=seed) seeds it
        obs, info = self.env.reset(options=options)
        return obs, info | {"seeds": seeded}


class FireOnNewLife(gym.Wrapper):
    """Presses FIRE once at the start of a game and after each lost life, as SB3's and CleanRL's FireResetEnv
    do (with their episodic-life wrapper, a lost life is a reset there). Breakout and similar games wait for
    FIRE to serve: a greedy policy that has not learned to press it plays nothing until the 108,000-frame
    limit. The extra step is the environment's own (its reward is added; it is not an agent step), and it
    is a function of the state, so a replayed episode (SeededEpisodes) presses it at the same frames."""

    def __init__(self, env: gym.Env, fire: int):
        super().__init__(env)
        self.fire, self.lives = fire, 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(self.fire)
        if terminated or truncated:  # not in any game's first frames; kept for safety, as FireResetEnv does
            obs, info = self.env.reset()
        self.lives = info.get("lives", 0)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives", 0)
        if 0 < lives < self.lives and not (terminated or truncated):
            obs, extra, terminated, truncated, info = self.env.step(self.fire)
            reward, lives = reward + extra, info.get("lives", 0)
        self.lives = lives
        return obs, reward, terminated, truncated, info


def _atari(env: gym.Env, cfg, training: bool) -> gym.Env:
    """The Nature-DQN preprocessing: no-op starts, frame skip with max-pooling, 84x84 grey, frame stack."""
    game = env.unwrapped
    if hasattr(game, "seed_game") and game.ale.getFloat("repeat_action_probability") == 0:
        env = SeedWithoutReload(env)
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=84,
        terminal_on_life_loss=training and cfg.terminal_on_life_loss,
        grayscale_obs=True,
    )
    meanings = game.get_action_meanings()
    if cfg.fire_reset and "FIRE" in meanings:
        env = FireOnNewLife(env, meanings.index("FIRE"))
    if training and cfg.clip_rewards:
        env = gym.wrappers.TransformReward(env, np.sign)
    return gym.wrappers.FrameStackObservation(env, cfg.frame_stack)


def max_steps(env: gym.Env) -> int:
    return (env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else None) or 1000


def success_rule(env_id: str) -> Callable[[bool, bool, float, dict], bool]:
    """What counts as a successful episode: reaching the goal, surviving (CartPole), not crashing (highway)."""
    if env_id.startswith("CartPole"):
        return lambda term, trunc, r, info: trunc and not term
    if env_id.startswith(("CliffWalking", "Acrobot", "MountainCar")):
        return lambda term, trunc, r, info: term
    if is_highway(env_id):
        return lambda term, trunc, r, info: not info.get("crashed", False)
    return lambda term, trunc, r, info: bool(info.get("success", term and r > 0))


class DrivingStats:
    """highway-env's figures per episode: collision, mean speed (m/s) and lane changes."""

    def __init__(self):
        self.crashes, self.speeds, self.lane_changes = 0, [], []

    def start(self, env: gym.Env) -> None:
        self._speeds, self._changes, self._lane = [], 0, self._lane_of(env)

    def step(self, env: gym.Env, info: dict) -> None:
        self._speeds.append(float(info.get("speed", 0.0)))
        lane = self._lane_of(env)
        self._changes += lane != self._lane
        self._lane = lane

    def end(self, info: dict) -> None:
        self.crashes += bool(info.get("crashed", False))
        self.speeds.append(float(np.mean(self._speeds)) if self._speeds else 0.0)
        self.lane_changes.append(self._changes)

    def summary(self, episodes: int) -> dict[str, float]:
        return {
            "collision_rate": self.crashes / episodes,
            "mean_speed": float(np.mean(self.speeds)),
            "lane_changes_per_episode": float(np.mean(self.lane_changes)),
        }

    @staticmethod
    def _lane_of(env: gym.Env):
        vehicle = getattr(env.unwrapped, "vehicle", None)
        return vehicle.lane_index[2] if vehicle is not None and vehicle.lane_index else None


def evaluate_policy(
    env: gym.Env, policy, episodes: int, seed: int, env_id: str, progress: str | None = None
) -> dict[str, Any]:
    """Greedy episodes reset with seeds seed, seed+1, ...: the same list for every run and every tool.
    `progress`: a bar with this label over the episodes on a terminal (20 Atari episodes take minutes); not
    while another bar is live (the periodic evaluations inside training)."""
    success = success_rule(env_id)
    driving = DrivingStats() if is_highway(env_id) else None
    returns, steps, wins = [], [], 0
    with progress_bar(progress or "", episodes, shown=progress is not None) as advance:
        for i in range(episodes):
            total, n, won = play_episode(env, policy, seed + i, success, driving)
            returns.append(total)
            steps.append(n)
            wins += won
            advance()
    return {
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "success_rate": wins / episodes,
        "mean_steps": float(np.mean(steps)),
        "first_seed": seed,
        **(driving.summary(episodes) if driving else {}),
    }


def play_episode(env: gym.Env, policy, seed: int, success, driving) -> tuple[float, int, int]:
    """One greedy episode: its return, its steps and whether it counts as a success (0 or 1)."""
    obs, _ = env.reset(seed=seed)
    if driving:
        driving.start(env)
    total, n = 0.0, 0
    while True:
        obs, r, term, trunc, info = env.step(policy(obs))
        total, n = total + float(r), n + 1
        if driving:
            driving.step(env, info)
        if term or trunc:
            if driving:
                driving.end(info)
            return total, n, int(success(term, trunc, r, info))


# -- vector environments with seeded episodes ----------------------------------------------------------


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, env_index, episode]).generate_state(1)[0])


class _Replayed(gym.Wrapper):
    """Rebuilds an episode in progress: reset with its seed, replay its actions; the vector env's first
    reset() then returns that state instead of starting over."""

    def __init__(self, env: gym.Env, seed: int, actions: np.ndarray):
        super().__init__(env)
        obs, info = env.reset(seed=seed)
        for a in actions:
            obs, _, term, trunc, info = env.step(a if a.ndim else a.item())
            if term or trunc:
                raise UserError(
                    f"resume: replaying the episode in progress ended it early, so {env.spec.id if env.spec else env} "
                    "is not deterministic given its seed and actions; this run cannot be resumed exactly"
                )
        self._pending = (obs, info)

    def reset(self, **kwargs):
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        return self.env.reset(**kwargs)


class SeededEpisodes:
    """Vector environments (gymnasium Sync/AsyncVectorEnv, autoreset off) that reset each episode with
    its own seed and can say where they stand (`state()`) and be rebuilt from that (`state=`).

    step() returns (obs, rewards, terminated, truncated, final_obs, finished): obs is what the agent sees
    next (a fresh episode's first observation where one ended), final_obs the true next observation
    (for bootstrapping past a time limit), finished a list of (env index, return, length) that ended."""

    def __init__(self, make: Callable[[], gym.Env], num_envs: int, seed: int, vector: str = "sync", state=None):
        self.seed, self.n = seed, num_envs
        self.episodes = np.zeros(num_envs, np.int64)
        self.returns, self.lengths = np.zeros(num_envs), np.zeros(num_envs, np.int64)
        fns = [make] * num_envs
        self._history: list[np.ndarray] = []  # the actions of every step since the oldest running episode began
        if state is not None:
            self.episodes = np.asarray(state["episodes"], np.int64)
            self.returns = np.asarray(state["returns"], np.float64)
            self.lengths = np.asarray(state["lengths"], np.int64)
            fns = [self._replay_fn(make, i, np.asarray(state["actions"][i])) for i in range(num_envs)]
            self._history = self._padded(state["actions"])
        cls = gym.vector.AsyncVectorEnv if vector == "async" else gym.vector.SyncVectorEnv
        self.envs = cls(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space

    def _replay_fn(self, make, i: int, actions: np.ndarray):
        seed = episode_seed(self.seed, i, int(self.episodes[i]))
        return lambda: _Replayed(make(), seed, actions)

    def _padded(self, actions: list) -> list[np.ndarray]:
        """Per-env action lists of different lengths back into per-step rows, right-aligned (the cells
        before an episode began are never read)."""
        filled = [np.asarray(a) for a in actions if len(a)]
        if not filled:
            return []
        longest = max(len(a) for a in filled)
        rows = np.zeros((longest, self.n, *filled[0].shape[1:]), filled[0].dtype)
        for i, a in enumerate(actions):
            if len(a):
                rows[longest - len(a) :, i] = np.asarray(a)
        return list(rows)

    def reset(self) -> np.ndarray:
        obs, _ = self.envs.reset(seed=[episode_seed(self.seed, i, int(k)) for i, k in enumerate(self.episodes)])
        return obs

    def step(self, actions: np.ndarray):
        next_obs, rewards, terminated, truncated, _ = self.envs.step(actions)
        self.returns += rewards
        self.lengths += 1
        self._history.append(np.array(actions))
        longest = int(self.lengths.max())
        if len(self._history) > 2 * longest + 64:  # forget the steps no running episode needs
            del self._history[: len(self._history) - longest]
        done = terminated | truncated
        finished, obs = [], next_obs
        if done.any():
            obs = next_obs.copy()
            for i in np.flatnonzero(done):
                finished.append((int(i), float(self.returns[i]), int(self.lengths[i])))
                self.episodes[i] += 1
                self.returns[i], self.lengths[i] = 0.0, 0
            seeds = [episode_seed(self.seed, i, int(k)) for i, k in enumerate(self.episodes)]
            fresh, _ = self.envs.reset(seed=seeds, options={"reset_mask": done})
            obs[done] = fresh[done]
        return obs, rewards, terminated, truncated, next_obs, finished

    def state(self) -> dict:
        """Where every sub-environment stands; arrays, so a checkpoint stores them as tensors."""
        shape, dtype = self.single_action_space.shape, self.single_action_space.dtype
        actions = []
        for i in range(self.n):
            n = int(self.lengths[i])
            steps = self._history[len(self._history) - n :] if n else []
            actions.append(np.asarray([a[i] for a in steps], dtype).reshape(-1, *shape))
        return {
            "episodes": self.episodes.copy(),
            "returns": self.returns.copy(),
            "lengths": self.lengths.copy(),
            "actions": actions,
        }

    def close(self) -> None:
        self.envs.close()
