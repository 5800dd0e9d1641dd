"""One trial of a study trained by several processes (DDP), for `nnrecipe tune --nproc N`:
`python -m torch.distributed.run --standalone --nproc-per-node N -m nnrecipe.tune.trial STUDY TRIAL RUN`.

The tuner sampled the trial and created its run directory; every process trains that run, rank 0 reports
each epoch's objective to the study's storage, and its pruner's decision reaches every process through one
reduce, so all of them stop at the same epoch (a process stopping alone would leave the others waiting in
their next all-reduce)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from nnrecipe.engine.distributed import end_process_group, is_main_process
from nnrecipe.engine.loop import Callback
from nnrecipe.runs import Run
from nnrecipe.tasks.family import get_family
from nnrecipe.tune.study import PruneTrial, load_plan, make_pruner, make_sampler, storage_of


class SharedPrune(Callback):
    """Rank 0 asks the pruner (`inner`); every rank learns the answer."""

    def __init__(self, inner: PruneTrial | None):
        self.inner = inner

    def after_epoch(self, trainer, row: dict[str, Any]) -> None:
        stop = self.inner is not None and self.inner.after_evaluation(trainer.state.epoch, row)
        flag = trainer.acc.reduce(torch.tensor([float(stop)], device=trainer.acc.device), "sum")
        if flag.item() > 0:
            trainer.state.status = "pruned"


def open_trial(plan, folder: Path, number: int):
    """The study's RUNNING trial `number`, as an Optuna Trial that can report and ask the pruner."""
    import optuna

    storage = optuna.storages.get_storage(storage_of(plan, folder))
    study = optuna.load_study(study_name=plan.name, storage=storage, sampler=make_sampler(plan),
                              pruner=make_pruner(plan))  # fmt: skip
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(plan.name), number)
    return optuna.trial.Trial(study, trial_id)


def main(argv: list[str]) -> int:
    folder, number, run = Path(argv[0]), int(argv[1]), Run(Path(argv[2]))
    plan = load_plan(folder)
    recipe = run.recipe()
    callbacks = []
    if not plan.multi and plan.pruner != "none":
        callbacks = [
            SharedPrune(PruneTrial(open_trial(plan, folder, number), plan.metric) if is_main_process() else None)
        ]
    try:
        result = get_family(recipe.task).train(recipe, run, callbacks=callbacks)
    finally:
        end_process_group()
    return 130 if result.get("status") == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
