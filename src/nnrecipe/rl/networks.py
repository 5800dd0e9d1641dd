"""The networks RL algorithms share: an MLP for vector observations, the Nature-DQN convolutional torso for
stacked Atari frames, and an actor-critic with a Categorical or Gaussian policy head.

Each network is rebuilt from a small JSON spec saved in run.json (`spec()`), so `rl evaluate`, `rl play`
and export load a run without its recipe's environment."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from nnrecipe.engine.loop import console
from nnrecipe.engine.numerics import EMULATED_BF16, cpu_bf16_units

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias: the initialisation the PPO implementation details rely on."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class NatureCNN(nn.Module):
    """Mnih et al. (2015): three convolutions and a 512-unit layer over 4 stacked 84x84 grey frames."""

    def __init__(self, channels: int, out: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            _init(nn.Conv2d(channels, 32, 8, stride=4)),
            nn.ReLU(),
            _init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            _init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            _init(nn.Linear(64 * 7 * 7, out)),
            nn.ReLU(),
        )
        self.out_dim = out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Frames arrive as uint8 (4x less to move and store). The input goes channels_last, the weights stay
        # as they are (checkpoints and exports unchanged): a PPO minibatch of 256 frames, forward and
        # backward, took 141-175 ms instead of 213-225 ms on an AMD EPYC's 2 cores. Reordered while still
        # uint8 (a quarter of the bytes), then scaled in place: the same values, 3.5 ms instead of 5.8 ms for
        # those 256 frames on an Intel Xeon.
        return self.net(obs.contiguous(memory_format=torch.channels_last).float().div_(255.0))


def mlp(in_dim: int, hidden: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers, width = [nn.Flatten()], in_dim
    for h in hidden:
        layers += [_init(nn.Linear(width, h)), activation()]
        width = h
    return nn.Sequential(*layers)


def is_image(obs_shape) -> bool:
    return len(obs_shape) == 3


def observation_spec(space: gym.Space) -> dict:
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"needs Box observations, not {space}")
    return {"obs_shape": list(space.shape)}


def action_spec(space: gym.Space) -> dict:
    if isinstance(space, gym.spaces.Discrete):
        return {"n_actions": int(space.n)}
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return {"action_dim": int(space.shape[0]), "low": space.low.tolist(), "high": space.high.tolist()}
    raise ValueError(f"needs Discrete or 1-D Box actions, not {space}")


class ActorCritic(nn.Module):
    """A policy and a value function. Images: one shared Nature-CNN torso with two heads (as in the PPO
    Atari recipe); vectors: separate tanh MLPs for actor and critic (CleanRL's classic-control PPO).
    Discrete actions: Categorical over logits; continuous: a Gaussian with a state-independent log-std."""

    def __init__(
        self, obs_shape: list[int], hidden: list[int], n_actions: int | None = None, action_dim: int | None = None, **_
    ):
        super().__init__()
        self.continuous = action_dim is not None
        out = action_dim if self.continuous else n_actions
        if is_image(obs_shape):
            torso = NatureCNN(obs_shape[0])
            self.actor_torso, self.critic_torso, width = torso, torso, torso.out_dim
            critic_width = width
        else:
            in_dim = int(np.prod(obs_shape))
            self.actor_torso, self.critic_torso = mlp(in_dim, hidden), mlp(in_dim, hidden)
            width = critic_width = hidden[-1] if hidden else in_dim
        self.torso_dtype: torch.dtype | None = None  # bf16: the image torso under autocast (torso_precision)
        self.actor_head = _init(nn.Linear(width, out), gain=0.01)  # near-uniform first policy
        self.critic_head = _init(nn.Linear(critic_width, 1), gain=1.0)
        if self.continuous:
            self.log_std = nn.Parameter(torch.zeros(out))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or the Gaussian's mean (continuous): what export and greedy play need."""
        return self.actor_head(self._features(self.actor_torso, obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic_head(self._features(self.critic_torso, obs)).squeeze(-1)

    def _features(self, torso: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """The torso's output, in fp32 whatever it computed in: the heads, and so the log-probabilities, the
        ratios and the values built from them, stay fp32."""
        if self.torso_dtype is None:
            return torso(obs)
        with torch.autocast(obs.device.type, dtype=self.torso_dtype):
            return torso(obs).float()

    def distribution(self, obs: torch.Tensor):
        return self._distribution(self(obs))

    def heads(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the policy head's output, the value), the shared image torso run once (twice would double PPO's
        convolution work)."""
        if self.actor_torso is self.critic_torso:
            features = self._features(self.actor_torso, obs)
            return self.actor_head(features), self.critic_head(features).squeeze(-1)
        return self(obs), self.value(obs)

    def distribution_and_value(self, obs: torch.Tensor):
        out, value = self.heads(obs)
        return self._distribution(out), value

    def _distribution(self, out: torch.Tensor):
        # validate_args off: the argument checks cost more than the sampling for a batch of 8 observations
        if self.continuous:
            return Normal(out, self.log_std.exp().expand_as(out), validate_args=False)
        return Categorical(logits=out, validate_args=False)

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor):
        """(log-probability of `actions`, the policy's entropy, the value) at `obs`, written out instead of
        through a distribution object: PPO's minibatch step builds one per minibatch, and on a 64-sample
        LunarLander minibatch its construction and methods cost more than the two small MLPs."""
        out, value = self.heads(obs)
        if self.continuous:
            log_std = self.log_std.expand_as(out)
            z = (actions - out) * torch.exp(-log_std)
            log_prob = (-0.5 * z * z - log_std - LOG_SQRT_2PI).sum(-1)
            return log_prob, (0.5 + LOG_SQRT_2PI + log_std).sum(-1), value
        logp = out.log_softmax(-1).clamp(min=torch.finfo(out.dtype).min)  # 0 * -inf would be nan
        log_prob = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return log_prob, -(logp.exp() * logp).sum(-1), value

    def log_prob(self, dist, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp.sum(-1) if self.continuous else lp

    def entropy(self, dist) -> torch.Tensor:
        e = dist.entropy()
        return e.sum(-1) if self.continuous else e


def torso_precision(setting: str, obs_shape, device: torch.device) -> tuple[torch.dtype | None, str]:
    """What the actor-critic's torso computes in (None: fp32), and why, for `precision` auto | fp32 | bf16.

    Only the Nature CNN of image observations is a candidate: its convolutions are most of a PPO update, and
    bf16 autocast ran a minibatch of 256 Pong frames 1.5x faster on an Intel Xeon with AMX (79 -> 52 ms) and
    1.65x on an AMD EPYC with AVX512-BF16; the tanh MLPs of vector observations are too small to gain. auto
    takes bf16 where the device has it natively (CUDA with bf16, a CPU with AMX or AVX512-BF16)."""
    if not is_image(obs_shape):
        return None, "fp32 (vector observations: an MLP torso gains nothing from bf16)"
    if setting != "auto":
        why = f"{setting} for the CNN torso (as set)"
        if setting == "bf16" and device.type == "cpu" and not cpu_bf16_units():  # or a run begun on another CPU
            why += f"; {EMULATED_BF16}"
        return (torch.bfloat16 if setting == "bf16" else None), why
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 (auto: this CUDA device supports bf16)"
        return None, "fp32 (auto: no bf16 on this CUDA device)"
    units = cpu_bf16_units()
    if units:
        return torch.bfloat16, f"bf16 for the CNN torso (auto: this CPU has {units}); heads and losses fp32"
    return None, "fp32 (auto: this CPU has no native bf16 units, AMX or AVX512-BF16)"


def build_actor_critic(envs, cfg, device: torch.device, resume: dict | None, algo: str) -> tuple[ActorCritic, dict]:
    """The actor-critic PPO and REINFORCE train on `envs` and its spec, its torso in the precision
    `cfg.precision` resolves to (a resumed run's checkpoint says which it began with, whatever this machine
    would choose), said once."""
    spec = observation_spec(envs.single_observation_space) | action_spec(envs.single_action_space)
    net = ActorCritic(hidden=cfg.hidden, **spec).to(device)
    setting = resume.get("precision", "fp32") if resume else cfg.precision
    net.torso_dtype, why = torso_precision(setting, spec["obs_shape"], device)
    console.print(f"{algo}: {why}" + ("; kept from the run's start" if resume else ""))
    return net, spec


def obs_tensor(obs, device) -> torch.Tensor:
    """Observations as the networks take them: stacked frames stay uint8, vectors become float32."""
    x = np.asarray(obs)
    return torch.as_tensor(x if x.dtype == np.uint8 else x.astype(np.float32, copy=False), device=device)


def numpy_layers(torso: nn.Module, head: nn.Linear) -> list[tuple[np.ndarray, np.ndarray]]:
    """An MLP's (weight.T, bias) pairs, copied out of torch."""
    linears = [m for m in torso if isinstance(m, nn.Linear)] + [head]
    return [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]


def numpy_forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The tanh MLP's forward pass (`mlp`'s activation) on a float32 batch."""
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            np.tanh(x, out=x)
    return x


class NumpyPolicy:
    """Greedy play through a NumPy copy of an MLP actor: for one observation at a time (evaluation) a
    NumPy forward pass costs a fraction of torch's per-call overhead."""

    def __init__(self, net: ActorCritic, low, high):
        self.layers = numpy_layers(net.actor_torso, net.actor_head)
        self.continuous, self.low, self.high = net.continuous, low, high

    def __call__(self, obs):
        x = numpy_forward(self.layers, np.asarray(obs, np.float32).reshape(1, -1))[0]
        return np.clip(x, self.low, self.high) if self.continuous else int(x.argmax())


class NumpyActorCritic:
    """A NumPy snapshot of an MLP actor-critic that collects a rollout on the CPU: actions sampled (from
    `rng`, the algorithm's checkpointed generator), their log-probabilities and the values, for a vector
    of observations per call. Taken after each update; for 16 LunarLander observations a step costs a
    fraction of torch's forward, distribution and sampling calls."""

    def __init__(self, net: ActorCritic):
        self.actor = numpy_layers(net.actor_torso, net.actor_head)
        self.critic = numpy_layers(net.critic_torso, net.critic_head)
        self.continuous = net.continuous
        if self.continuous:
            self.log_std = net.log_std.detach().cpu().numpy().astype(np.float32)

    @staticmethod
    def fits(net: ActorCritic, device: torch.device) -> bool:
        """MLP torsos (not the shared image CNN) whose weights are on the CPU."""
        return device.type == "cpu" and net.actor_torso is not net.critic_torso

    def value(self, obs: np.ndarray) -> np.ndarray:
        return numpy_forward(self.critic, obs.reshape(len(obs), -1))[:, 0]

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, log-probabilities, values) for a float32 batch of observations."""
        x = obs.reshape(len(obs), -1)
        out = numpy_forward(self.actor, x)
        if self.continuous:
            noise = rng.standard_normal(out.shape).astype(np.float32)
            actions = out + np.exp(self.log_std) * noise
            log_prob = (-0.5 * noise * noise - self.log_std - np.float32(LOG_SQRT_2PI)).sum(-1)
        else:
            shifted = out - out.max(-1, keepdims=True)
            e = np.exp(shifted)
            total = e.sum(-1, keepdims=True)
            cdf = np.cumsum(e, -1) / total
            actions = np.minimum((rng.random((len(x), 1)) >= cdf).sum(-1), out.shape[-1] - 1)  # inverse CDF
            log_prob = (shifted - np.log(total))[np.arange(len(x)), actions]
        return actions, log_prob, self.value(obs)


def policy_actions(net: ActorCritic, spec: dict, device) -> callable:
    """Greedy play: the most likely action, or the Gaussian's mean clipped to the action bounds."""
    low = np.asarray(spec.get("low", []), np.float32)
    high = np.asarray(spec.get("high", []), np.float32)
    if not is_image(spec["obs_shape"]):
        return NumpyPolicy(net, low, high)

    def act(obs):
        with torch.no_grad():
            out = net(obs_tensor(obs, device).unsqueeze(0))[0]
        if net.continuous:
            return np.clip(out.cpu().numpy(), low, high)
        return int(out.argmax().item())

    return act
