"""PPO (Schulman et al. 2017) in the spirit of CleanRL's ppo.py / ppo_atari.py / ppo_continuous_action.py:
one file, top to bottom.

Rollouts of `num_steps` from `num_envs` vector environments; GAE(lambda) advantages, normalised per
minibatch; the clipped surrogate objective, an optionally clipped value loss, an entropy bonus; `epochs`
passes over shuffled minibatches; the learning rate annealed linearly to zero; gradient clipping; an
optional early stop of the epochs when the approximate KL passes `target_kl`. Discrete actions sample a
Categorical, continuous ones a Gaussian with a state-independent log-std (clipped to the bounds only when
stepping the environment). A time limit is not a terminal state: the value of the last observation is
added to the reward there, so truncated episodes are bootstrapped, not cut.

Checkpoints are taken at rollout boundaries and hold everything the next rollout depends on (networks,
optimiser, random states, each environment's episode, the reward scaler), so a resumed run is the
uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nnrecipe.engine.numerics import flush_denormals
from nnrecipe.rl.best import BestNetwork, restore_rng, rng_state
from nnrecipe.rl.envs import SeededEpisodes
from nnrecipe.rl.networks import ActorCritic, NumpyActorCritic, build_actor_critic, obs_tensor, policy_actions


class ReturnScale:
    """Rewards divided by the running std of the discounted return (SB3's VecNormalize norm_reward, the
    NormalizeReward wrapper): keeps value targets near unit scale whatever the environment's reward units."""

    def __init__(self, num_envs: int, gamma: float, state=None):
        self.gamma, self.ret = gamma, np.zeros(num_envs)
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0
        if state is not None:
            self.ret = np.asarray(state["ret"], np.float64)
            self.count, self.mean, self.var = state["count"], state["mean"], state["var"]

    def __call__(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        batch_mean, batch_var, n = self.ret.mean(), self.ret.var(), len(self.ret)
        delta, total = batch_mean - self.mean, self.count + n  # Chan et al.'s parallel update
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total
        self.ret[done] = 0.0
        return rewards / np.sqrt(self.var + 1e-8)

    def state(self) -> dict:
        return {"ret": self.ret.copy(), "count": self.count, "mean": self.mean, "var": self.var}


def gae(rewards, values, dones, last_value, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; dones[t] marks that step t ended an episode."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        next_value = last_value if t == len(rewards) - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        advantages[t] = last = delta + gamma * lam * alive * last
    return advantages, advantages + values


def ppo_update(net: ActorCritic, optimizer, batch: dict, cfg, clip: float) -> dict:
    """`epochs` passes over shuffled minibatches of the flattened rollout. Each epoch gathers the batch in
    its shuffled order once, so a minibatch is a slice (a view) rather than six gathers."""
    n = len(batch["values"])
    ratios, params = [], list(net.parameters())
    for _ in range(cfg.epochs):
        order = torch.randperm(n, device=batch["values"].device)
        shuffled = {k: v[order] for k, v in batch.items()}
        for start in range(0, n, cfg.minibatch_size):
            mb = {k: v[start : start + cfg.minibatch_size] for k, v in shuffled.items()}
            log_prob, entropy, value = net.evaluate_actions(mb["obs"], mb["actions"])
            log_ratio = log_prob - mb["log_probs"]
            ratio = log_ratio.exp()
            ratios.append(ratio.detach())
            adv = mb["advantages"]
            if cfg.normalize_advantages and len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
            v_loss = (value - mb["returns"]) ** 2
            if cfg.clip_value:
                clipped = mb["values"] + (value - mb["values"]).clamp(-clip, clip)
                v_loss = torch.max(v_loss, (clipped - mb["returns"]) ** 2)
            v_loss = 0.5 * v_loss.mean()
            entropy = entropy.mean()
            loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
            optimizer.step()
        with torch.no_grad():  # the epoch's last minibatch: the low-variance estimator (Schulman's blog)
            approx_kl = ((ratio - 1) - log_ratio).mean()
        if cfg.target_kl is not None and approx_kl > cfg.target_kl:
            break
    return {
        "policy_loss": pg_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy.item(),
        "approx_kl": approx_kl.item(),
        "clip_fraction": ((torch.cat(ratios) - 1.0).abs() > clip).float().mean().item(),  # of the samples seen
    }


def stacked(steps: list, device: torch.device) -> torch.Tensor:
    """A rollout's per-step arrays (NumPy) or tensors as one num_steps x num_envs tensor on `device`."""
    if isinstance(steps[0], torch.Tensor):
        return torch.stack(steps)
    return torch.as_tensor(np.stack(steps), device=device)


def collect_rollout(
    net: ActorCritic, envs, obs: np.ndarray, cfg, gamma: float, device: torch.device, rng: np.random.Generator,
    scale: ReturnScale | None, bounds: tuple[np.ndarray, np.ndarray],
) -> tuple[dict[str, list], np.ndarray, list[float]]:  # fmt: skip
    """`cfg.num_steps` steps of every environment under the current policy: the rollout (per step: inputs,
    actions, log-probabilities, values, rewards, dones), the observation after it, and the returns of the
    episodes that finished."""
    rollout: dict[str, list] = {k: [] for k in ("obs", "actions", "log_probs", "values", "rewards", "dones")}
    sampler = NumpyActorCritic(net) if NumpyActorCritic.fits(net, device) else None
    returns: list[float] = []
    for _ in range(cfg.num_steps):
        if sampler is not None:  # MLPs on the CPU: a NumPy forward pass and draw per step
            x = np.asarray(obs, np.float32)
            action, log_prob, value = sampler.sample(x, rng)
            act = action
        else:
            with torch.no_grad():
                x = obs_tensor(obs, device)
                dist, value = net.distribution_and_value(x)
                action = dist.sample()
                log_prob = net.log_prob(dist, action)
            act = action.cpu().numpy()
        for key, v in (("obs", x), ("actions", action), ("log_probs", log_prob), ("values", value)):
            rollout[key].append(v)
        obs, rewards, terminated, truncated, final_obs, finished = envs.step(
            np.clip(act, *bounds) if net.continuous else act
        )
        done = terminated | truncated
        returns += [ret for _, ret, _ in finished]
        if scale is not None:
            rewards = scale(rewards, done)
        cut = truncated & ~terminated
        if cut.any():  # a time limit: bootstrap from the value of where the episode was cut
            if sampler is not None:
                tail = sampler.value(np.asarray(final_obs[cut], np.float32))
            else:
                with torch.no_grad():
                    tail = net.value(obs_tensor(final_obs[cut], device)).cpu().numpy()
            rewards = rewards.astype(np.float64)
            rewards[cut] += gamma * tail
        rollout["rewards"].append(np.asarray(rewards, np.float32))
        rollout["dones"].append(done.astype(np.float32))
    return rollout, obs, returns


def rollout_batch(
    net: ActorCritic, rollout: dict[str, list], obs: np.ndarray, cfg, gamma: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """The rollout as one flat batch with its GAE advantages and returns (bootstrapped from the value of
    the observation after it)."""
    with torch.no_grad():
        last_value = net.value(obs_tensor(obs, device))
    r = {k: stacked(v, device) for k, v in rollout.items()}
    advantages, returns = gae(r["rewards"], r["values"], r["dones"], last_value, gamma, cfg.gae_lambda)
    return {
        "obs": r["obs"].flatten(0, 1),
        "actions": r["actions"].flatten(0, 1),
        "log_probs": r["log_probs"].flatten(),
        "values": r["values"].flatten(),
        "advantages": advantages.flatten(),
        "returns": returns.flatten(),
    }


@flush_denormals()
def train_ppo(
    make_env: Callable,
    cfg,
    gamma: float,
    seed: int,
    device: torch.device,
    evaluate: Callable,
    on_log: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """Returns {"final", "best", "best_return", "best_step", "seconds"} like train_dqn."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)  # the NumPy rollout's actions (MLP policies on the CPU)
    envs = SeededEpisodes(make_env, cfg.num_envs, seed, cfg.vector, resume and resume["envs"])
    net, spec = build_actor_critic(envs, cfg, device, resume, "PPO")
    # fused: one kernel for the whole Adam update instead of a Python loop over parameters
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
    scale = ReturnScale(cfg.num_envs, gamma, resume and resume.get("scale")) if cfg.normalize_rewards else None
    step, update, recent = 0, 0, []
    if resume:
        net.load_state_dict(resume["net"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(rng, resume["rng"])
        step, update, recent = resume["step"], resume["update"], list(resume["recent"])
    best = BestNetwork(net, evaluate, cfg.eval_every, step, resume)
    low = np.asarray(spec.get("low", -np.inf), np.float32)
    high = np.asarray(spec.get("high", np.inf), np.float32)
    batch_steps = cfg.num_steps * cfg.num_envs
    updates = -(-cfg.total_steps // batch_steps)
    obs = envs.reset()

    while update < updates:
        # ALGO LOGIC: anneal the learning rate linearly to zero over the updates
        left = 1.0 - update / updates
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.lr * left
        rollout, obs, returns = collect_rollout(net, envs, obs, cfg, gamma, device, rng, scale, (low, high))
        recent += returns
        step += batch_steps
        update += 1

        # ALGO LOGIC: advantages, then the clipped-objective epochs
        batch = rollout_batch(net, rollout, obs, cfg, gamma, device)
        stats = ppo_update(net, optimizer, batch, cfg, cfg.clip * (left if cfg.anneal_clip else 1.0))

        # TRY NOT TO MODIFY: periodic greedy evaluation, logging, checkpoint
        if best.due(step, cfg.total_steps) or update == updates:
            eval_return = best.evaluate(step, net, policy_actions(net, spec, device))
            if on_log is not None:
                on_log(
                    {
                        "step": step,
                        "eval_return": eval_return,
                        "train_return": float(np.mean(recent)) if recent else None,
                        "lr": optimizer.param_groups[0]["lr"],
                        **stats,
                        "steps_per_s": best.steps_per_s(step),
                    }
                )
            recent = []
            if on_checkpoint is not None:
                on_checkpoint(
                    {
                        "step": step,
                        "update": update,
                        "net": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "envs": envs.state(),
                        "rng": rng_state(rng),
                        "recent": recent,
                        "precision": "fp32" if net.torso_dtype is None else "bf16",
                        **({"scale": scale.state()} if scale is not None else {}),
                        **best.state(),
                    }
                )
    envs.close()
    out = best.result(net)
    for trained in (out["final"], out["best"]):  # scored after training as `rl evaluate`, export and serve run them
        trained.torso_dtype = None
    return out | {"spec": spec}
