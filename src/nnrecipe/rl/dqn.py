"""DQN for discrete actions and vector observations, in the spirit of CleanRL: one file, top to bottom.

Replay buffer, target network (hard copy every `target_update` environment steps, or Polyak updates
with tau < 1), optional Double DQN, Huber loss, gradient clipping, linear epsilon schedule, gymnasium
vector environments (SyncVectorEnv, or AsyncVectorEnv with a process per environment). The network
that scores best in the periodic greedy evaluations is kept next to the final one, and both are
reported: a run that reaches 500 once and then collapses has not solved the task.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.engine.numerics import flush_denormals


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: list[int]):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class NumpyActor:
    """A NumPy copy of the Q-network for acting. Weights only change in training phases (every
    `train_freq` steps), so acting and evaluation run on a snapshot taken after each phase: a NumPy
    forward pass for one observation costs a fraction of torch's per-call overhead."""

    def __init__(self, q_net: QNetwork):
        linears = [m for m in q_net.net if isinstance(m, nn.Linear)]
        self.layers = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears
        ]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float32)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return x

    def __call__(self, obs) -> int:
        """Greedy action for one observation."""
        return int(self.q_values(obs).argmax())


class ReplayBuffer:
    """Fixed-size ring buffer of transitions in preallocated NumPy arrays."""

    def __init__(self, capacity: int, obs_dim: int, rng: np.random.Generator):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.pos, self.rng = capacity, 0, 0, rng

    def add(self, obs, next_obs, action, reward, terminated) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i], self.actions[i], self.rewards[i], self.terminated[i] = (
            obs,
            next_obs,
            action,
            reward,
            terminated,
        )
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, shape, device) -> tuple[torch.Tensor, ...]:
        """Uniform samples with replacement; `shape` = (batches, batch_size) draws several batches at once."""
        idx = self.rng.integers(0, self.size, shape)
        return tuple(
            torch.as_tensor(a[idx], device=device)
            for a in (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)
        )


@flush_denormals()
def train_dqn(
    make_env: Callable[[], gym.Env],
    cfg,
    gamma: float,
    seed: int,
    device: torch.device,
    evaluate: Callable[[Callable[[np.ndarray], int]], float],
    on_log: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """`evaluate` scores a greedy policy (obs -> action). Returns {"final": q_network, "best": the best
    network by periodic evaluation, "best_return", "best_step", "seconds"}.

    At every periodic evaluation `on_checkpoint` receives the state to resume from (networks, optimiser,
    counters, best network). `resume` takes that state back; the replay buffer is not saved, so a
    resumed run refills it with `learning_starts` steps of its current policy before training again."""
    first = resume["step"] if resume else 0
    random.seed(seed + first)
    np.random.seed((seed + first) % 2**32)
    torch.manual_seed(seed + first)
    rng = np.random.default_rng([seed, first])
    vector = gym.vector.AsyncVectorEnv if cfg.vector == "async" else gym.vector.SyncVectorEnv
    envs = vector([make_env for _ in range(cfg.num_envs)])
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)
    q_net = QNetwork(obs_dim, n_actions, cfg.hidden).to(device)
    target = copy.deepcopy(q_net)
    # fused: one kernel for the whole Adam update instead of a loop over parameters (CPU and CUDA)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=cfg.lr, fused=True)
    actor = NumpyActor(q_net)
    params = list(q_net.parameters())  # module.parameters() walks the module tree on every call
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, rng)
    best = {"return": -np.inf, "state": copy.deepcopy(q_net.state_dict()), "step": 0}
    grad_steps = 0
    if resume:
        q_net.load_state_dict(resume["q"])
        target.load_state_dict(resume["target"])
        optimizer.load_state_dict(resume["optimizer"])
        best = {"return": resume["best_return"], "state": resume["best"], "step": resume["best_step"]}
        grad_steps = resume["gradient_steps"]
        actor = NumpyActor(q_net)
    envs.action_space.seed(seed + first)

    obs, _ = envs.reset(seed=seed + first)
    obs = obs.reshape(cfg.num_envs, obs_dim)
    was_done = np.zeros(cfg.num_envs, bool)
    episode_return, recent = np.zeros(cfg.num_envs), []
    next_eval, start = first + cfg.eval_every, time.perf_counter()
    decay_steps = cfg.exploration_fraction * cfg.total_steps

    for step in range(first, cfg.total_steps, cfg.num_envs):
        # ALGO LOGIC: epsilon-greedy action
        eps = cfg.epsilon + (cfg.epsilon_end - cfg.epsilon) * min(1.0, step / decay_steps)
        if rng.random() < eps:
            actions = envs.action_space.sample()
        else:
            actions = actor.q_values(obs).argmax(1)
        next_obs, rewards, terminated, truncated, _ = envs.step(actions)
        next_obs = next_obs.reshape(cfg.num_envs, obs_dim)
        for i in range(cfg.num_envs):
            # gymnasium autoresets on the step after an episode ends; that step is not a transition.
            if not was_done[i]:
                buffer.add(obs[i], next_obs[i], actions[i], rewards[i], terminated[i])
                episode_return[i] += rewards[i]
        done = terminated | truncated
        for i in np.flatnonzero(done & ~was_done):
            recent.append(episode_return[i])
            episode_return[i] = 0.0
        was_done = done
        obs = next_obs

        # ALGO LOGIC: training phase
        warm = buffer.size >= max(cfg.learning_starts, cfg.batch_size)  # also after a resume's empty buffer
        if warm and (step // cfg.num_envs) % max(1, cfg.train_freq // cfg.num_envs) == 0:
            # The target net only changes between environment steps, so it is constant for the whole
            # phase: draw every batch of the phase at once and value all next states in one pass.
            obs_all, act_all, rew_all, next_all, term_all = buffer.sample((cfg.gradient_steps, cfg.batch_size), device)
            with torch.no_grad():
                target_q_all = target(next_all)
                if not cfg.double:
                    y_all = rew_all + gamma * target_q_all.max(-1).values * (
                        1.0 - term_all
                    )  # no bootstrap past termination
            for g in range(cfg.gradient_steps):
                b_obs, b_act = obs_all[g], act_all[g]
                if cfg.double:  # the online net (changing every step) chooses, the target net values
                    with torch.no_grad():
                        next_a = q_net(next_all[g]).argmax(1, keepdim=True)
                        y = rew_all[g] + gamma * target_q_all[g].gather(1, next_a).squeeze(1) * (1.0 - term_all[g])
                else:
                    y = y_all[g]
                q = q_net(b_obs).gather(1, b_act.unsqueeze(1)).squeeze(1)
                loss = F.smooth_l1_loss(q, y)  # Huber
                for p in params:  # optimizer.zero_grad's bookkeeping costs more than this loop
                    p.grad = None
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                optimizer.step()
                grad_steps += 1
            actor = NumpyActor(q_net)

        # ALGO LOGIC: target network, every `target_update` environment steps (as in CleanRL and SB3):
        # a hard copy with tau = 1, a Polyak step towards the online net otherwise.
        if step // cfg.target_update != (step + cfg.num_envs) // cfg.target_update:
            with torch.no_grad():
                for t, p in zip(target.parameters(), q_net.parameters()):
                    t.lerp_(p, cfg.tau)

        # TRY NOT TO MODIFY: periodic greedy evaluation, logging, best network
        done_steps = step + cfg.num_envs
        if done_steps >= next_eval or done_steps >= cfg.total_steps:
            next_eval += cfg.eval_every
            eval_return = evaluate(actor)
            if eval_return >= best["return"]:
                best = {"return": eval_return, "state": copy.deepcopy(q_net.state_dict()), "step": done_steps}
            if on_log is not None:
                on_log(
                    {
                        "step": done_steps,
                        "eval_return": eval_return,
                        "train_return": float(np.mean(recent)) if recent else None,
                        "epsilon": eps,
                        "gradient_steps": grad_steps,
                        "steps_per_s": (done_steps - first) / (time.perf_counter() - start),
                    }
                )
            recent = []
            if on_checkpoint is not None:
                on_checkpoint(
                    {
                        "step": done_steps,
                        "gradient_steps": grad_steps,
                        "q": q_net.state_dict(),
                        "target": target.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "best": best["state"],
                        "best_return": float(best["return"]),
                        "best_step": best["step"],
                    }
                )
    envs.close()
    best_net = copy.deepcopy(q_net)
    best_net.load_state_dict(best["state"])
    return {
        "final": q_net,
        "best": best_net,
        "best_return": best["return"],
        "best_step": best["step"],
        "seconds": time.perf_counter() - start,
    }
