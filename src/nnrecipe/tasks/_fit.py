"""What every supervised task does around the engine: record the run's status and curves after fit(),
and pick the data an `evaluate` call asks for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnrecipe.engine.loop import FitResult, Trainer
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import UserError
from nnrecipe.reporting.plots import plot_curves
from nnrecipe.runs import Run


def fit_run(run: Run, trainer: Trainer, tracker: Tracker, resume: bool, plots: bool) -> FitResult:
    try:
        result = trainer.fit(resume=resume)
    except UserError:
        run.update_meta(status="diverged")
        raise
    finally:
        tracker.close()
    run.update_meta(status=result.status)
    if plots and result.status != "interrupted" and result.history and trainer.acc.is_main_process:
        plot_curves(result.history, run.plots_dir / "curves.png")
    return result


def evaluate_split(
    run: Run, split: str, data_path: str | None, read: Callable, splits: Callable, report: Callable
) -> dict[str, Any]:
    """`nnrecipe evaluate`: a file given with --data (read with the run's recipe), or one of the recipe's
    splits; `report(run, recipe, part, split, device, source=...)` scores it and writes the report."""
    from nnrecipe.engine.loop import make_accelerator

    recipe = run.recipe()
    device = make_accelerator(recipe.train, cpu_bf16=True).device
    if data_path is not None:
        return report(run, recipe, read(recipe, Path(data_path)), f"data:{data_path}", device, source=str(data_path))
    train_set, val_set, test_set = splits(recipe)
    part = {"train": train_set, "val": val_set, "test": test_set}[split]
    if part is None:
        raise UserError(f"--split {split}: this run has no {split} split")
    return report(run, recipe, part, split, device)


def finish_transformer_run(run: Run, recipe, acc, result: FitResult, val_set, test_set, load, report) -> dict[str, Any]:
    """After fit() of a text or NER run: keep peft adapter weights alone and report on test (else val);
    rank 0 only. `load(run)` gives (model, tokenizer, meta); `report` is the task's report writer."""
    from nnrecipe.models.hf import save_adapter

    if result.status == "interrupted":
        return {"status": result.status, "run": str(run.dir)}
    summary: dict[str, Any] = {}
    if acc.is_main_process:
        save_adapter(load(run)[0], recipe.model.finetune, run.dir / "adapter")
        split, part = ("test", test_set) if test_set is not None else ("val", val_set)
        if part is not None:
            summary = report(run, recipe, part, split, acc.device)
    return {"status": result.status, "run": str(run.dir), "history": result.history, **summary}
