"""What every supervised task does around the engine's fit(): record the run's status and curves."""

from __future__ import annotations

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
    if plots and result.status != "interrupted" and result.history:
        plot_curves(result.history, run.plots_dir / "curves.png")
    return result
