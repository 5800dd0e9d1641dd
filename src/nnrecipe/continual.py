"""Continual learning as a sequence of ordinary runs: `train` on a recipe with stages trains one run per
stage, each continuing the one before (the family's `continue_from`), scores every stage's model on every
stage's held-out data, and writes the accuracy matrix, average accuracy, forgetting and backward transfer
(runs/<name>-continual/report.md, with a heat map)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nnrecipe.engine.loop import console
from nnrecipe.reporting.continual import continual_metrics, write_continual_report
from nnrecipe.runs import Run, train_new_run
from nnrecipe.tasks.family import Stages, TaskFamily


def train_stages(family: TaskFamily, recipe: Any, plan: Stages, recipe_name: str) -> dict[str, Any]:
    base = recipe.track.name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stages = plan.recipes
    runs: list[Run] = []
    matrix: list[list[float]] = []
    holdouts: list[Any] = []  # each stage's held-out data, read once, after the first stage trained
    for k, stage in enumerate(stages):
        if runs:
            family.continue_from(stage, runs[-1].dir)
        stage.track.name = f"{base}-stage{k + 1}"
        # a stage's runs measure that stage: `clean` compares them with the same stage of other sequences only
        run, result = train_new_run(family, stage, f"{recipe_name}-stage{k + 1}", f"stage {k + 1}/{len(stages)}")
        if result["status"] == "interrupted":
            return {"status": "interrupted", "runs": [str(r.dir) for r in runs + [run]]}
        runs.append(run)
        holdouts = holdouts or [family.continual_holdout(s) for s in stages]
        matrix.append([family.continual_score(run, s, h) for s, h in zip(stages, holdouts)])
        console.print("accuracy on each stage: " + "  ".join(f"{v:.3f}" for v in matrix[-1]))
    folder = Path(recipe.track.runs_dir) / f"{base}-continual"
    path = write_continual_report(folder, plan.names, matrix, [r.dir.name for r in runs], plan.strategy)
    console.print(f"continual-learning report: {path}")
    return {"status": "finished", "runs": [str(r.dir) for r in runs], "accuracy_matrix": matrix,
            "report": str(path), **continual_metrics(matrix)}  # fmt: skip
