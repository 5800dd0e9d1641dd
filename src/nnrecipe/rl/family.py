"""Reinforcement learning as a task family: `nnrecipe train` / `evaluate` on an RL recipe, and
`nnrecipe rl play` (rl/cli.py) for one greedy episode. The algorithms live in tabular.py and dqn.py; the
interaction loop, run directory and reports in runner.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nnrecipe.errors import UserError
from nnrecipe.rl import runner
from nnrecipe.rl.config import RLRecipe
from nnrecipe.runs import Run
from nnrecipe.tasks.family import Metric, TaskFamily, register_family


@register_family
class ReinforcementLearning(TaskFamily):
    name = "rl"
    recipe = RLRecipe
    metric = Metric("mean_return", "max")
    hints = {"predict": "use `nnrecipe rl play` or `nnrecipe rl evaluate`"}
    seed_field = "seed"
    multi_process = False  # one interaction loop, one process

    def anchor_paths(self, recipe: RLRecipe, folder: Path) -> None:
        """A gridmap map file may be named relative to the recipe (or the current folder); it is kept as an
        absolute path, so the run's recipe finds it from any folder (`rl evaluate` elsewhere said not found)."""
        env = recipe.env
        if env.map and "\n" not in env.map:
            found = [p for p in (Path(env.map), folder / env.map) if p.is_file()]
            if found:
                env.map = os.path.abspath(found[0])

    def train(self, recipe: RLRecipe, run: Run, *, resume: bool = False, callbacks: list = ()) -> dict[str, Any]:
        """Its own interaction loop, not the engine's: callbacks hear only `after_evaluation` (each periodic
        evaluation's mean return), which may stop the run (a tuner's pruner)."""
        return runner.train(recipe, run, resume=resume, listeners=callbacks)

    def evaluate(
        self, run: Run, split: str | None = None, data_path: str | None = None, episodes: int | None = None
    ) -> dict[str, Any]:
        """Greedy episodes on the recipe's fixed seed list (an RL run has no data splits)."""
        if data_path is not None:
            raise UserError(
                "--data: RL runs are evaluated in their environment; use --episodes with `nnrecipe rl evaluate`"
            )
        if split is not None:  # it was ignored: the same greedy episodes were reported as the asked split
            raise UserError(f"--split {split}: an RL run has no data splits; it is evaluated on its environment")
        return runner.evaluate(run, episodes=episodes)
