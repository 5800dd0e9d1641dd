"""DQN for discrete actions, vector or stacked-frame observations, in the spirit of CleanRL: one file, top
to bottom.

Replay buffer, target network (hard copy every `target_update` environment steps, or Polyak updates
with tau < 1), optional Double DQN, Huber loss, gradient clipping, linear epsilon schedule, gymnasium
vector environments (SyncVectorEnv, or AsyncVectorEnv with a process per environment). The network
that scores best in the periodic greedy evaluations is kept next to the final one, and both are
reported: a run that reaches 500 once and then collapses has not solved the task. With `average` the
network the run answers with (evaluated, kept, returned as final) is an exponential moving average of the
online network's weights over gradient steps: each training phase (128 steps against a freshly copied
target) swings the greedy policy, and the average smooths the swings (bench/RESULTS.md). Checkpoints hold
the replay buffer, random states and each environment's episode, so a resumed run is the uninterrupted run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.engine.numerics import flush_denormals
from nnrecipe.rl.best import BestNetwork, restore_rng, rng_state
from nnrecipe.rl.envs import SeededEpisodes
from nnrecipe.rl.networks import NatureCNN, is_image, obs_tensor


class QNetwork(nn.Module):
    """Q-values for each action: an MLP over vector observations (flattened), or the Nature-DQN CNN
    over stacked frames."""

    def __init__(self, obs_shape, n_actions: int, hidden: list[int]):
        super().__init__()
        obs_shape = [obs_shape] if isinstance(obs_shape, int) else list(obs_shape)
        if is_image(obs_shape):
            torso = NatureCNN(obs_shape[0])
            self.net = nn.Sequential(torso, nn.Linear(torso.out_dim, n_actions))
            return
        layers, width = [], int(np.prod(obs_shape))
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs if obs.dtype == torch.uint8 else obs.flatten(1))


class NumpyActor:
    """A NumPy copy of an MLP Q-network for acting. Weights only change in training phases (every
    `train_freq` steps), so acting and evaluation run on a snapshot taken after each phase: a NumPy
    forward pass for one observation costs a fraction of torch's per-call overhead."""

    def __init__(self, q_net: QNetwork):
        linears = [m for m in q_net.net if isinstance(m, nn.Linear)]
        self.layers = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears
        ]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float32)
        x = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return x

    def __call__(self, obs) -> int:
        """Greedy action for one observation."""
        return int(self.q_values(obs[None]).argmax())


class TorchActor:
    """Acting with the Q-network itself (image observations: a convolution is not worth copying to NumPy)."""

    def __init__(self, q_net: QNetwork, device):
        self.q_net, self.device = q_net, device

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.q_net(obs_tensor(obs, self.device)).cpu().numpy()

    def __call__(self, obs) -> int:
        return int(self.q_values(np.asarray(obs)[None]).argmax())


def actor_for(q_net: QNetwork, device):
    return TorchActor(q_net, device) if isinstance(q_net.net[0], NatureCNN) else NumpyActor(q_net)


class ReplayBuffer:
    """Fixed-size ring buffer of transitions in preallocated NumPy arrays (frames stay uint8)."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, capacity: int, obs_shape, obs_dtype, rng: np.random.Generator):
        self.obs = np.zeros((capacity, *obs_shape), obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), obs_dtype)
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

    def nbytes(self) -> int:
        return sum(getattr(self, f)[: self.size].nbytes for f in self.FIELDS)

    def save(self, path: Path, max_mb: float) -> bool:
        """Write the filled part compressed and atomically, in place (so sampling after a resume draws the
        same transitions); returns whether all of it fit in `max_mb`, otherwise only the newest
        transitions that fit are written, oldest first."""
        per = self.nbytes() / max(self.size, 1)
        keep = min(self.size, int(max_mb * 2**20 // per)) if per else 0
        if keep == self.size:
            order, pos = np.arange(self.size), self.pos
        else:
            order = (np.arange(self.size) + (self.pos if self.size == self.capacity else 0)) % self.capacity
            order, pos = order[len(order) - keep :], keep % self.capacity
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        try:
            np.savez_compressed(tmp, pos=np.int64(pos), **{f: getattr(self, f)[order] for f in self.FIELDS})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return keep == self.size

    def load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:  # plain arrays only: nothing is unpickled
            n = min(len(data["actions"]), self.capacity)
            for f in self.FIELDS:
                getattr(self, f)[:n] = data[f][:n]
            self.size, self.pos = n, int(data["pos"]) % self.capacity


class DQNLearner:
    """What DQN learns with: the online Q-network, its target network, Adam, and with `dqn.average` the
    averaged copy the run answers with (evaluated, kept, returned as final)."""

    def __init__(self, space: gym.Space, n_actions: int, cfg, gamma: float, device: torch.device):
        self.cfg, self.gamma, self.device = cfg, gamma, device
        self.q_net = QNetwork(space.shape, n_actions, cfg.hidden).to(device)
        self.target = copy.deepcopy(self.q_net)
        # fused: one kernel for the whole Adam update instead of a loop over parameters (CPU and CUDA)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=cfg.lr, fused=True)
        self.params = list(self.q_net.parameters())  # module.parameters() walks the module tree on every call
        self.averaged = copy.deepcopy(self.q_net) if cfg.average else None
        self.averaged_params = list(self.averaged.parameters()) if self.averaged is not None else []
        self.answer = self.averaged if self.averaged is not None else self.q_net
        self.gradient_steps = 0

    def state(self) -> dict:
        return {
            "gradient_steps": self.gradient_steps,
            "q": self.q_net.state_dict(),
            **({"averaged": self.averaged.state_dict()} if self.averaged is not None else {}),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load(self, state: dict) -> None:
        self.q_net.load_state_dict(state["q"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_steps = state["gradient_steps"]

    def learn(self, buffer: ReplayBuffer, step: int) -> None:
        """One training phase of `cfg.gradient_steps` updates on batches from the replay buffer."""
        cfg, gamma, q_net = self.cfg, self.gamma, self.q_net
        if cfg.lr_end is not None:
            self.optimizer.param_groups[0]["lr"] = cfg.lr + (cfg.lr_end - cfg.lr) * step / cfg.total_steps
        # The target net only changes between environment steps, so it is constant for the whole
        # phase: draw every batch of the phase at once and value all next states in one pass.
        obs_all, act_all, rew_all, next_all, term_all = buffer.sample((cfg.gradient_steps, cfg.batch_size), self.device)
        with torch.no_grad():
            target_q_all = self.target(next_all.flatten(0, 1)).unflatten(0, next_all.shape[:2])
            if not cfg.double:  # no bootstrap past termination
                y_all = rew_all + gamma * target_q_all.max(-1).values * (1.0 - term_all)
        for g in range(cfg.gradient_steps):
            if cfg.double:  # the online net (changing every step) chooses, the target net values
                with torch.no_grad():
                    next_a = q_net(next_all[g]).argmax(1, keepdim=True)
                    y = rew_all[g] + gamma * target_q_all[g].gather(1, next_a).squeeze(1) * (1.0 - term_all[g])
            else:
                y = y_all[g]
            q = q_net(obs_all[g]).gather(1, act_all[g].unsqueeze(1)).squeeze(1)
            loss = F.smooth_l1_loss(q, y)  # Huber
            for p in self.params:  # optimizer.zero_grad's bookkeeping costs more than this loop
                p.grad = None
            loss.backward()
            nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
            self.optimizer.step()
            if self.averaged is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(self.averaged_params, self.params, 1.0 - cfg.average)
            self.gradient_steps += 1

    def update_target(self, step: int) -> None:
        """Every `target_update` environment steps (as in CleanRL and SB3): a hard copy with tau = 1, a
        Polyak step towards the online net otherwise."""
        cfg = self.cfg
        if step // cfg.target_update != (step + cfg.num_envs) // cfg.target_update:
            with torch.no_grad():
                for t, p in zip(self.target.parameters(), self.q_net.parameters()):
                    t.lerp_(p, cfg.tau)


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
    counters, random states, environments, and the replay buffer to save beside it). `resume` takes that
    state back, with the buffer already loaded into resume["buffer"] when it was saved."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = SeededEpisodes(make_env, cfg.num_envs, seed, cfg.vector, resume and resume["envs"])
    space = envs.single_observation_space
    n_actions = int(envs.single_action_space.n)
    learner = DQNLearner(space, n_actions, cfg, gamma, device)
    buffer = ReplayBuffer(cfg.buffer_size, space.shape, space.dtype, rng)
    first, recent = 0, []
    if resume:
        learner.load(resume)
        restore_rng(rng, resume["rng"])
        first, recent = resume["step"], list(resume["recent"])
        if resume.get("buffer") is not None:
            buffer.load(resume["buffer"])
    answer = learner.answer
    best = BestNetwork(answer, evaluate, cfg.eval_every, first, resume)
    actor = actor_for(learner.q_net, device)
    obs = envs.reset()
    decay_steps = cfg.exploration_fraction * cfg.total_steps

    for step in range(first, cfg.total_steps, cfg.num_envs):
        # ALGO LOGIC: epsilon-greedy action
        eps = cfg.epsilon + (cfg.epsilon_end - cfg.epsilon) * min(1.0, step / decay_steps)
        if rng.random() < eps:
            actions = rng.integers(0, n_actions, cfg.num_envs)
        else:
            actions = actor.q_values(obs).argmax(1)
        obs_after, rewards, terminated, _, next_obs, finished = envs.step(actions)
        for i in range(cfg.num_envs):  # next_obs is the true next state, also where an episode ended
            buffer.add(obs[i], next_obs[i], actions[i], rewards[i], terminated[i])
        recent += [ret for _, ret, _ in finished]
        obs = obs_after

        # ALGO LOGIC: a training phase every `train_freq` steps once the buffer holds enough, then the target
        warm = buffer.size >= max(cfg.learning_starts, cfg.batch_size)  # also after a resume's empty buffer
        if warm and (step // cfg.num_envs) % max(1, cfg.train_freq // cfg.num_envs) == 0:
            learner.learn(buffer, step)
            actor = actor_for(learner.q_net, device)
        learner.update_target(step)

        # TRY NOT TO MODIFY: periodic greedy evaluation, logging, checkpoint
        done_steps = step + cfg.num_envs
        if best.due(done_steps, cfg.total_steps):
            greedy = actor if learner.averaged is None else actor_for(learner.averaged, device)
            eval_return = best.evaluate(done_steps, answer, greedy)
            if on_log is not None:
                on_log(
                    {
                        "step": done_steps,
                        "eval_return": eval_return,
                        "train_return": float(np.mean(recent)) if recent else None,
                        "epsilon": eps,
                        "gradient_steps": learner.gradient_steps,
                        "steps_per_s": best.steps_per_s(done_steps),
                    }
                )
            recent = []
            if on_checkpoint is not None:
                on_checkpoint(
                    {
                        "step": done_steps,
                        **learner.state(),
                        "envs": envs.state(),
                        "rng": rng_state(rng),
                        "recent": recent,
                        "buffer": buffer,
                        **best.state(),
                    }
                )
    envs.close()
    return best.result(answer)
