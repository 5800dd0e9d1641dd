"""A sampler seeded per trial, so no two trials of a study draw the same random numbers.

An Optuna sampler seeded once replays its random sequence in every process that opens the study: the two
workers of `--jobs 2` proposed the same parameters for every trial, as did a `--resume` for the trials that
came before it, and so would two machines running the same command. Here each trial's parameters are drawn
by a fresh sampler seeded from (the study's seed, the trial's number): trial numbers are unique in the
storage, so every trial draws its own numbers, whichever process runs it, and a one-process study is as
reproducible as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler: independent streams for neighbouring numbers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeed(optuna.samplers.BaseSampler):
    """Delegates each trial to `make(trial_seed(seed, trial.number))`. The samplers keep no history of their
    own beyond their random state (TPE, NSGA-II, CMA-ES and the grid read it from the storage), so a fresh
    one per trial changes only where the random numbers come from."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.number, self.inner = -1, None

    def __str__(self) -> str:
        return f"a sampler seeded per trial from {self.seed}"

    def sampler(self, trial: Any) -> optuna.samplers.BaseSampler:
        if trial.number != self.number:
            self.number, self.inner = trial.number, self.make(trial_seed(self.seed, trial.number))
        return self.inner

    def before_trial(self, study, trial) -> None:
        self.sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self.sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self.sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values: Sequence[float] | None) -> None:
        self.sampler(trial).after_trial(study, trial, state, values)
