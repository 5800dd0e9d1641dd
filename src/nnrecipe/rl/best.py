"""What every deep RL algorithm here does besides learning: periodic greedy evaluation, keeping the best
network, and counting steps per second. Shared so that DQN, REINFORCE and PPO report alike."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch


class BestNetwork:
    """Evaluates the greedy policy every `every` environment steps and keeps the best network's weights.
    A run that reaches 500 once and then collapses has not solved the task, so the final network is
    reported beside this one."""

    def __init__(self, net: torch.nn.Module, evaluate: Callable, every: int, first_step: int = 0, state=None):
        self.evaluate_fn, self.every = evaluate, every
        self.next_eval = first_step + every
        self.first_step, self.start = first_step, time.perf_counter()
        self.last_step = first_step  # the steps actually taken: whole rollouts can run past total_steps
        self.best = {"return": -np.inf, "state": copy.deepcopy(net.state_dict()), "step": 0}
        if state is not None:
            self.best = {"return": state["best_return"], "state": state["best"], "step": state["best_step"]}

    def due(self, step: int, total: int) -> bool:
        self.last_step = step
        return step >= self.next_eval or step >= total

    def evaluate(self, step: int, net: torch.nn.Module, policy) -> float:
        while self.next_eval <= step:
            self.next_eval += self.every
        score = self.evaluate_fn(policy)
        if score >= self.best["return"]:
            self.best = {"return": score, "state": copy.deepcopy(net.state_dict()), "step": step}
        return score

    def steps_per_s(self, step: int) -> float:
        return (step - self.first_step) / max(time.perf_counter() - self.start, 1e-9)

    def state(self) -> dict:
        return {"best": self.best["state"], "best_return": float(self.best["return"]), "best_step": self.best["step"]}

    def result(self, net: torch.nn.Module) -> dict:
        best_net = copy.deepcopy(net)
        best_net.load_state_dict(self.best["state"])
        return {
            "final": net,
            "best": best_net,
            "best_return": self.best["return"],
            "best_step": self.best["step"],
            "seconds": time.perf_counter() - self.start,
            "steps": self.last_step,  # every step of the run, resumed ones included
            "session_steps": self.last_step - self.first_step,  # the steps `seconds` measured
        }


def rng_state(rng: np.random.Generator) -> dict:
    """Every random source a run draws from, for an exact resume."""
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8))
