"""The supervised fit skeleton, written once for every family the engine trains.

A family supplies its splits, a `Setup` (model, optimiser, TrainTask, loaders, the spec inference needs)
and a report writer; `SupervisedFamily.train` does the rest the same way for all of them: seed, device,
tracker, the engine's Trainer, resume, status and curves, then a report on test (else validation).
`evaluate` scores one split, or other data the family can read, through the same report writer.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nnrecipe.engine.loop import (
    Callback,
    Diverged,
    EpochLoader,
    FitResult,
    Trainer,
    TrainTask,
    console,
    describe,
    make_accelerator,
    settle_precision,
)
from nnrecipe.engine.mlflow_tracking import publish
from nnrecipe.engine.progress import progress
from nnrecipe.engine.seeding import seed_everything
from nnrecipe.engine.tracking import Tracker
from nnrecipe.errors import RecipeError, UserError
from nnrecipe.models import head_parameter_names
from nnrecipe.reporting.calibration import plot_reliability
from nnrecipe.reporting.plots import plot_curves
from nnrecipe.runs import Run
from nnrecipe.tasks.family import Splits, TaskFamily, family_names, get_family


@dataclass
class Setup:
    """What a family builds for one training run; the skeleton does everything else."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: TrainTask
    train_loader: EpochLoader
    val_loader: EpochLoader | None
    spec: dict[str, Any]  # saved in run.json as "spec": everything inference needs besides the weights
    summary: str  # the run's first console line (the device is added)
    callbacks: list[Callback] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # anything else run.json should record
    keep: dict[str, Any] = field(default_factory=dict)  # what the family's finish() needs from setup


class EvaluatedFamily(TaskFamily):
    """A family scored on splits of its data: `evaluate` for one split, or other data it can read."""

    # train.precision auto on a CPU with bf16 units: True, bf16 (matmul-heavy models); False, fp32; None, the
    # run's own step is timed in both (engine/precision_probe.py)
    cpu_bf16: ClassVar[bool | None] = None
    adversarial_methods: ClassVar[tuple[str, ...]] = ()  # the train.adversarial methods its TrainTask honours
    adversarial_epsilon: ClassVar[tuple[float, float | None]] = (8 / 255, None)  # (default, exclusive upper bound)

    @abstractmethod
    def splits(self, recipe: Any) -> Splits:
        """The recipe's data: train, val and test parts (None where there is none)."""

    @abstractmethod
    def report(self, run: Run, recipe: Any, part: Any, split: str, device, source: str | None = None) -> dict[str, Any]:
        """Score the run's trained model on `part`, write report.json/.md (and plots), print a summary."""

    def read(self, run: Run, recipe: Any, path: Path) -> Any:
        """Other data in the run's format, for `evaluate --data`."""
        self.unsupported("evaluate --data")

    def evaluate(self, run: Run, split: str | None = None, data_path: str | None = None) -> dict[str, Any]:
        recipe = run.recipe()
        device = self.eval_device(recipe)
        if data_path is not None:
            part = self.read(run, recipe, Path(data_path))
            return self.report(run, recipe, part, f"data:{data_path}", device, source=str(data_path))
        splits = self.splits(recipe)
        split, part = splits.reported() if split is None else (split, splits.named(split))
        if part is None:
            raise UserError(f"{run.dir}: no validation or test split to evaluate on")
        return self.report(run, recipe, part, split, device)

    def eval_device(self, recipe: Any) -> torch.device:
        return make_accelerator(recipe.train, cpu_bf16=self.bf16_on_cpu(recipe)).device

    def bf16_on_cpu(self, recipe: Any) -> bool | None:
        """train.precision auto on a CPU with bf16 units for this recipe: bf16 (True), fp32 (False) or timed
        (None); default: the family's cpu_bf16."""
        return self.cpu_bf16

    def prune_keep_whole(self, model: nn.Module) -> set[str]:
        """The classifier head (timm's get_classifier(), else the last nn.Linear)."""
        return {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}


class SupervisedFamily(EvaluatedFamily):
    """A family trained by the engine on its splits: supply `splits`, `setup` and `report`."""

    # train.strategy fsdp: its models are transformers that FSDP shards block by block (engine/sharding.py)
    fsdp: ClassVar[bool] = False

    def adversarial_of(self, recipe: Any):
        """`train.adversarial` checked against this family, its epsilon filled in; None when it is off."""
        adv = recipe.train.adversarial
        if adv is None:
            return None
        if not self.adversarial_methods:
            offering = [n for n in family_names() if getattr(get_family(n), "adversarial_methods", ())]
            raise RecipeError(f"train.adversarial: {', '.join(offering)} runs only (this one: {self.name}); remove it")
        if adv.method not in self.adversarial_methods:
            raise RecipeError(f"train.adversarial.method: for {self.name}, one of {', '.join(self.adversarial_methods)} "
                              f"(got {adv.method!r})")  # fmt: skip
        default, bound = self.adversarial_epsilon
        eps = adv.epsilon if adv.epsilon is not None else default
        if bound is not None and eps >= bound:
            raise RecipeError(f"train.adversarial.epsilon: below {bound:g} for {self.name} (got {eps:g})")
        return adv.model_copy(update={"epsilon": eps})

    @abstractmethod
    def setup(self, recipe: Any, splits: Splits, acc, run: Run) -> Setup:
        """Everything the engine needs for this run (`run`: for files the family keeps beside it)."""

    def finish(self, run: Run, recipe: Any, setup: Setup) -> None:
        """After a completed fit, on rank 0, before the report (e.g. keep a peft adapter alone)."""

    def train(self, recipe: Any, run: Run, *, resume: bool = False, callbacks: list[Callback] = ()) -> dict[str, Any]:
        """Train (or resume) a run, then report its best weights on test (else validation)."""
        self.adversarial_of(recipe)  # a method this family cannot train with: refused before anything starts
        if recipe.train.strategy == "fsdp" and not self.fsdp:
            offering = [n for n in family_names() if getattr(get_family(n), "fsdp", False)]
            raise RecipeError(f"train.strategy: fsdp is for {', '.join(offering)} (this run: {self.name}); use ddp")
        seed_everything(recipe.train.seed)
        acc = make_accelerator(recipe.train, cpu_bf16=self.bf16_on_cpu(recipe))
        before = run.meta().get("processes", 1)
        if resume and before != acc.num_processes:  # each process's data shard and RNG depend on the count
            raise UserError(
                f"{run.dir} trained with {before} process(es); resume it with {before} (this launch has "
                f"{acc.num_processes}), e.g. `torchrun --nproc-per-node {before} -m nnrecipe.cli resume {run.dir}`"
            )
        splits = self.splits(recipe)
        if splits.skipped:
            console.print(
                f"[yellow]skipped {len(splits.skipped)} unreadable file(s), e.g. {splits.skipped[0]}[/yellow]"
            )
        s = self.setup(recipe, splits, acc, run)
        acc = settle_precision(
            acc, recipe.train, s.model, s.task, s.train_loader, run.meta().get("precision") if resume else None
        )
        sizes = {
            k: len(v) if v is not None else 0
            for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        }
        if resume:
            refuse_changed_data(run, sizes)
        # Before the run says "running": an MLflow server that does not answer left a new run saying so forever
        tracker = Tracker.for_recipe(run.dir, recipe)
        run.update_meta(
            status="running",
            processes=acc.num_processes,
            precision=acc.mixed_precision.replace("no", "fp32"),
            task=self.name,
            spec=s.spec,
            sizes=sizes,
            skipped_files=splits.skipped,
            **splits.meta,
            **s.meta,
        )
        console.print(f"{s.summary}; {describe(acc, recipe.train.strategy)}", soft_wrap=True)
        trainer = Trainer(
            accelerator=acc,
            model=s.model,
            optimizer=s.optimizer,
            task=s.task,
            train_loader=s.train_loader,
            val_loader=s.val_loader,
            train_cfg=recipe.train,
            schedule_cfg=recipe.schedule,
            run_dir=run.dir,
            tracker=tracker,
            callbacks=[*s.callbacks, *callbacks],
            progress=recipe.track.progress,
        )
        result = fit_run(run, trainer, tracker, resume, recipe.track.plots)
        if result.status == "interrupted":
            return {"status": result.status, "run": str(run.dir)}
        summary: dict[str, Any] = {}
        if acc.is_main_process:
            with run.failure_recorded("reporting"):  # trained and saved; `resume` reports once it is mended
                self.finish(run, recipe, s)
                split, part = splits.reported()
                if part is not None:
                    summary = self.report(run, recipe, part, split, acc.device)
                if recipe.track.mlflow:
                    publish(run.dir, recipe.track.mlflow_uri, result.status)
            if run.meta().get("error"):  # the error of a try before this one, mended
                run.update_meta(error=None)
        return {"status": result.status, "run": str(run.dir), "history": result.history, **summary}


def refuse_changed_data(run: Run, sizes: dict[str, int]) -> None:
    """Examples added to or removed from the data since the run last started (run.json's sizes): the epoch
    order and the schedule were drawn for the data it had, and a mid-epoch resume skips by position, so the
    run went on silently on other examples than an uninterrupted one would have seen."""
    then = run.meta().get("sizes") or {}
    changed = [f"{k}: {then[k]:,} then, {n:,} now" for k, n in sizes.items() if k in then and then[k] != n]
    if changed:
        raise UserError(
            f"resume {run.dir}: the data changed since the run started ({'; '.join(changed)}); it cannot continue "
            "exactly: restore the data as it was, or train a new run"
        )


def fit_run(run: Run, trainer: Trainer, tracker: Tracker, resume: bool, plots: bool) -> FitResult:
    """trainer.fit() with the run's status recorded (diverged, failed, interrupted, finished) and its curves drawn."""
    try:
        with run.failure_recorded("training", expected=(Diverged,)):
            result = trainer.fit(resume=resume)
    except Diverged:
        run.update_meta(status="diverged")
        raise
    finally:
        tracker.close()
    run.update_meta(status=result.status, **({"averaged": result.averaged} if result.averaged else {}))
    if plots and result.status != "interrupted" and result.history and trainer.acc.is_main_process:
        plot_curves(result.history, run.plots_dir / "curves.png")
    return result


def plot_paths(run: Run, *names: str) -> list[str]:
    """Run-relative paths of the plots a report lists: the learning curves first, when there are any."""
    curves = ["plots/curves.png"] if (run.dir / "plots" / "curves.png").exists() else []
    return curves + [n for n in names if n]


def reliability_plot(run: Run, summary: dict[str, Any], tag: str) -> str:
    """The reliability diagram of a classification summary, as the run-relative path a report lists ("" for
    an empty split)."""
    if not summary.get("calibration"):
        return ""
    path = plot_reliability(summary["calibration"], run.plots_dir / f"reliability_{tag}.png")
    return str(path.relative_to(run.dir))


def scoring_bar(split: str, count: int):
    """progress() while a report scores `count` examples of `split` (`evaluate --data` on a large file took
    minutes, unseen), labelled by the file's name, not its path, which left no room for the count."""
    return progress(f"scoring {split.rsplit('/', 1)[-1]}", count)


def split_tag(split: str) -> str:
    """A split name fit for a file name (`data:/a/b` -> `data__a_b`)."""
    return split.replace("/", "_").replace(":", "_")
