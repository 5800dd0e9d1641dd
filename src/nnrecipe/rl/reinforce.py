"""REINFORCE (Williams 1992) with a learned baseline, as in Karpathy's "Pong from Pixels": play whole
episodes with the stochastic policy, weight each action's log-probability by the discounted reward-to-go
minus V(s), one gradient step per batch of `batch_episodes` finished episodes.

    G_t = r_t + gamma r_{t+1} + ... (+ gamma^k V(s_T) when a time limit, not the task, ended the episode)
    loss = -mean(log pi(a_t|s_t) * (G_t - V(s_t))) + vf_coef * mean((V(s_t) - G_t)^2) / 2 - ent_coef * H

With several environments, an episode still running when a batch is full carries over to the next
batch, so its first steps were played by the previous policy; num_envs: 1 (the default) is strictly
on-policy. Checkpoints are taken right after an update and hold the episodes in progress, so a resumed
run is the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nnrecipe.engine.numerics import flush_denormals
from nnrecipe.rl.best import BestNetwork, restore_rng, rng_state
from nnrecipe.rl.envs import SeededEpisodes
from nnrecipe.rl.networks import ActorCritic, build_actor_critic, obs_tensor, policy_actions


def reward_to_go(rewards: np.ndarray, gamma: float, tail: float = 0.0) -> np.ndarray:
    out, running = np.zeros(len(rewards), np.float32), tail
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def reinforce_update(net: ActorCritic, optimizer, episodes: list[dict], cfg, gamma: float, device) -> dict:
    obs = obs_tensor(np.concatenate([e["obs"] for e in episodes]), device)
    actions = torch.as_tensor(np.concatenate([e["actions"] for e in episodes]), device=device)
    with torch.no_grad():
        tails = [
            net.value(obs_tensor(e["final_obs"][None], device)).item() if e["cut"] and cfg.baseline else 0.0
            for e in episodes
        ]
    returns = torch.as_tensor(
        np.concatenate([reward_to_go(e["rewards"], gamma, tail) for e, tail in zip(episodes, tails)]), device=device
    )
    dist, value = net.distribution_and_value(obs)
    log_prob = net.log_prob(dist, actions)
    advantages, v_loss = returns, torch.zeros((), device=device)
    if cfg.baseline:
        advantages = returns - value.detach()
        v_loss = 0.5 * ((value - returns) ** 2).mean()
    if cfg.normalize_advantages and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = -(log_prob * advantages).mean()
    entropy = net.entropy(dist).mean()
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=True)
    optimizer.step()
    return {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item()}


def _empty() -> dict:
    return {"obs": [], "actions": [], "rewards": []}


def _stacked(trajectory: dict, obs_shape, obs_dtype, action_shape, action_dtype) -> dict:
    """A trajectory in progress as arrays (for a checkpoint, or for the update)."""
    return {
        "obs": np.asarray(trajectory["obs"], obs_dtype).reshape(-1, *obs_shape),
        "actions": np.asarray(trajectory["actions"], action_dtype).reshape(-1, *action_shape),
        "rewards": np.asarray(trajectory["rewards"], np.float32),
    }


@flush_denormals()
def train_reinforce(
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
    """Returns {"final", "best", "best_return", "best_step", "seconds", "spec"} like train_ppo."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = SeededEpisodes(make_env, cfg.num_envs, seed, cfg.vector, resume and resume["envs"])
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    net, spec = build_actor_critic(envs, cfg, device, resume, "REINFORCE")
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
    shapes = (obs_space.shape, obs_space.dtype, action_space.shape, action_space.dtype)
    running = [_empty() for _ in range(cfg.num_envs)]
    step, updates, recent = 0, 0, []
    if resume:
        net.load_state_dict(resume["net"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(rng, resume["rng"])
        step, updates, recent = resume["step"], resume["updates"], list(resume["recent"])
        running = [{k: list(np.asarray(v)) for k, v in t.items()} for t in resume["running"]]
    best = BestNetwork(net, evaluate, cfg.eval_every, step, resume)
    low = np.asarray(spec.get("low", -np.inf), np.float32)
    high = np.asarray(spec.get("high", np.inf), np.float32)
    obs, batch, stats = envs.reset(), [], {}

    while step < cfg.total_steps:
        # ALGO LOGIC: play the stochastic policy; an episode joins the batch when it ends
        with torch.no_grad():
            action = net.distribution(obs_tensor(obs, device)).sample().cpu().numpy()
        next_obs, rewards, terminated, truncated, final_obs, finished = envs.step(
            np.clip(action, low, high) if net.continuous else action
        )
        for i in range(cfg.num_envs):
            running[i]["obs"].append(np.array(obs[i]))
            running[i]["actions"].append(action[i])
            running[i]["rewards"].append(rewards[i])
        for i, ret, _ in finished:
            cut = bool(truncated[i] and not terminated[i])
            batch.append(_stacked(running[i], *shapes) | {"cut": cut, "final_obs": np.array(final_obs[i])})
            running[i] = _empty()
            recent.append(ret)
        obs, step = next_obs, step + cfg.num_envs

        # ALGO LOGIC: one policy-gradient step per full batch
        if len(batch) >= cfg.batch_episodes:
            stats = reinforce_update(net, optimizer, batch, cfg, gamma, device)
            batch, updates = [], updates + 1
        else:
            if step < cfg.total_steps:
                continue

        # TRY NOT TO MODIFY: periodic greedy evaluation, logging, checkpoint (right after an update)
        if best.due(step, cfg.total_steps):
            eval_return = best.evaluate(step, net, policy_actions(net, spec, device))
            if on_log is not None:
                row = {"step": step, "eval_return": eval_return, "updates": updates}
                row["train_return"] = float(np.mean(recent)) if recent else None
                on_log(row | stats | {"steps_per_s": best.steps_per_s(step)})
            recent = []
            if on_checkpoint is not None and not batch:
                on_checkpoint(
                    {
                        "step": step,
                        "updates": updates,
                        "net": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "envs": envs.state(),
                        "rng": rng_state(rng),
                        "recent": recent,
                        "precision": "fp32" if net.torso_dtype is None else "bf16",
                        "running": [_stacked(t, *shapes) for t in running],
                        **best.state(),
                    }
                )
    envs.close()
    out = best.result(net)
    for trained in (out["final"], out["best"]):  # scored after training as `rl evaluate`, export and serve run them
        trained.torso_dtype = None
    return out | {"spec": spec}
