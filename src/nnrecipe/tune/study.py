"""`nnrecipe tune`: a hyper-parameter search on Optuna over any family's recipe, through the registry.

Each trial is an ordinary run (`runs/<study>/trial-0007/`: recipe, metrics, checkpoints, report), so any
trial can be resumed, evaluated, exported or served. The objective is the family's primary metric on
validation (its best epoch), or any logged metric; pruners hear the metric after every epoch through an
engine callback and a pruned trial stops there. The study lives in `runs/<study>/`: `study.json` (what was
asked), the Optuna storage, `best.yaml`, `report.md/json` and plots.

Storage: Optuna's JournalStorage on a file in the study directory by default. It appends one record per
change under a file lock, so several processes (--jobs) and machines on a shared filesystem can write it at
once, which SQLite does badly (Optuna's documented trap); an RDB URL (--storage postgresql://...) serves
machines without a shared filesystem. The journal has no heartbeat, so a trial left RUNNING by a killed
process is recognised by its recorded host and process id: `--resume` marks it failed and runs its
parameters again, and counts only finished trials (complete or pruned) towards the planned number.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.engine.loop import Callback, console
from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks.family import get_family
from nnrecipe.tune.space import Param, check_space, load_space, parse_param, with_values

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "asha", "hyperband")
PLAN = "study.json"
JOURNAL = "journal.log"


@dataclass
class Plan:
    """What a study was asked to do, saved as study.json so --resume and every worker do the same."""

    recipe: dict[str, Any]  # the raw recipe (file + --set), paths anchored
    space: list[str]  # the parameters as NAME=KIND(ARGS)
    trials: int
    metric: str  # a logged key, e.g. val_accuracy
    direction: str  # maximize | minimize
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    storage: str | None = None  # an RDB URL; None = the journal file in the study directory
    name: str = "study"
    timeout: float | None = None
    source: str = ""  # the recipe file
    created: float = field(default_factory=time.time)

    def params(self) -> list[Param]:
        return [parse_param(p) for p in self.space]


def parse_duration(text: str | None) -> float | None:
    """'2h', '30m', '90s' or plain seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hms]?)\s*", text)
    if not m:
        raise RecipeError(f"--timeout: expected a duration like 2h, 30m, 90s or seconds (got {text!r})")
    return float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]


def objective_of(family, metric: str | None, direction: str | None) -> tuple[str, str]:
    """(logged key, direction): the family's primary validation metric unless told otherwise."""
    key = metric or f"val_{family.metric.name}"
    if direction is None:
        base = key.removeprefix("val_").removeprefix("train_")
        mode = family.metric.mode if base == family.metric.name else ("min" if "loss" in base else "max")
        direction = "maximize" if mode == "max" else "minimize"
    if direction not in ("maximize", "minimize"):
        raise RecipeError(f"--direction: maximize or minimize (got {direction!r})")
    return key, direction


def new_plan(
    recipe_raw: dict[str, Any], space_file: Path | None, params: list[str], trials: int, **options: Any
) -> Plan:
    """Validate everything (the recipe, every parameter's range, sampler and pruner) before any trial."""
    recipe = validate_recipe(recipe_raw)
    family = get_family(recipe.task)
    if trials < 1:
        raise RecipeError(f"--trials: at least 1 (got {trials})")
    space = load_space(space_file, params)
    check_space(recipe_raw, space)
    for flag, value, allowed in (("--sampler", options["sampler"], SAMPLERS), ("--pruner", options["pruner"], PRUNERS)):
        if value not in allowed:
            raise RecipeError(f"{flag}: one of {', '.join(allowed)} (got {value!r})")
    if options["sampler"] == "grid" and any(p.kind not in ("choice", "int") for p in space):
        raise RecipeError("--sampler grid: every parameter must be choice(...) or int(...) (a grid has finite points)")
    key, direction = objective_of(family, options.pop("metric"), options.pop("direction"))
    return Plan(recipe_raw, [p.describe() for p in space], trials, key, direction, **options)


def make_sampler(plan: Plan):
    import optuna

    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    if plan.sampler == "grid":
        grid = {p.name: p.choices or list(range(p.low, p.high + 1, p.step or 1)) for p in plan.params()}
        return optuna.samplers.GridSampler(grid, seed=plan.seed)
    if plan.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler needs it)
        except ImportError:
            raise UserError("--sampler cmaes: needs the `cmaes` package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=plan.seed)
    return optuna.samplers.TPESampler(seed=plan.seed)


def make_pruner(plan: Plan):
    import optuna

    train = getattr(validate_recipe(plan.recipe), "train", None)
    epochs = getattr(train, "epochs", 1)
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2)),
    }[plan.pruner]()


def storage_of(plan: Plan, folder: Path):
    if plan.storage:
        return plan.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def open_study(plan: Plan, folder: Path, create: bool = False):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = {"storage": storage_of(plan, folder), "sampler": make_sampler(plan), "pruner": make_pruner(plan)}
    if create:
        return optuna.create_study(study_name=plan.name, direction=plan.direction, load_if_exists=True, **kw)
    return optuna.load_study(study_name=plan.name, **kw)


class PruneTrial(Callback):
    """Reports the objective to Optuna after every epoch; a trial its pruner stops ends there, marked pruned."""

    def __init__(self, trial, key: str):
        self.trial, self.key = trial, key

    def after_epoch(self, trainer, row: dict[str, Any]) -> None:
        if self.key not in row:
            return
        self.trial.report(float(row[self.key]), trainer.state.epoch)
        if self.trial.should_prune():
            trainer.state.status = "pruned"
            console.print(f"trial {self.trial.number}: pruned after epoch {trainer.state.epoch}")


def objective(plan: Plan, folder: Path):
    """The function Optuna calls: one ordinary run per trial, its best epoch's metric the value."""
    import optuna

    params = plan.params()

    def run_trial(trial) -> float:
        values = {p.name: p.suggest(trial) for p in params}
        raw = with_values(plan.recipe, values)
        raw.setdefault("track", {}).update(
            {"runs_dir": str(folder), "name": f"trial-{trial.number:04d}", "progress": False}
        )
        recipe = validate_recipe(raw)
        family = get_family(recipe.task)
        run = create_run(recipe, f"trial-{trial.number:04d}")
        for key, value in (("run", run.dir.name), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        start = time.perf_counter()
        pruning = [PruneTrial(trial, plan.metric)] if family.takes_callbacks else []
        result = family.train(recipe, run, callbacks=pruning)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        if result.get("status") == "interrupted":
            trial.set_user_attr("interrupted", True)
            trial.study.stop()
            raise UserError(f"trial {trial.number} interrupted; `nnrecipe tune --resume {folder}` runs it again")
        value = best_value(result, plan.metric, plan.direction)
        if result.get("status") == "pruned":
            raise optuna.TrialPruned()
        return value

    return run_trial


def best_value(result: dict[str, Any], key: str, direction: str) -> float:
    """The best epoch's value of `key`; for runs without epochs (RL), the final summary's."""
    seen = [row[key] for row in result.get("history") or [] if key in row]
    if seen:
        return max(seen) if direction == "maximize" else min(seen)
    base = key.removeprefix("val_")
    if base in result:
        return float(result[base])
    raise UserError(f"--metric: {key!r} is not logged by this run; logged: {', '.join(sorted(result))}")


def finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def recover_orphans(study) -> int:
    """Trials left RUNNING by a process that no longer exists (kill -9, a reboot): failed, queued again."""
    from optuna.trial import TrialState

    here, queued = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == here and pid is not None and pid_alive(pid):
            raise UserError(f"trial {t.number} is still running in process {pid}; stop it before --resume")
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
        queued += 1
    rerun = {t.user_attrs.get("rerun_of") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in rerun:  # Ctrl-C: run it again, once
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
            queued += 1
    return queued


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_plan(plan: Plan, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PLAN + ".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    tmp.replace(folder / PLAN)


def load_plan(folder: Path) -> Plan:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise UserError(f"{folder}: not a study directory (no {PLAN})")
    return Plan(**json.loads(path.read_text()))


def worker(plan_dir: str, quota: int, threads: int | None) -> None:
    """One process of a --jobs study: its share of the trials on the shared storage."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    folder = Path(plan_dir)
    plan = load_plan(folder)
    study = open_study(plan, folder)
    study.optimize(objective(plan, folder), n_trials=quota, timeout=plan.timeout, catch=(UserError,),
                   callbacks=callbacks(plan))  # fmt: skip


def callbacks(plan: Plan) -> list:
    """Announce each finished trial; stop once the study holds the planned number (other workers count)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    return [announce, MaxTrialsCallback(plan.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]


def announce(study, trial) -> None:
    """One line per finished trial: number, state, value, best so far."""
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    try:
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "-"
    console.print(f"trial {trial.number}: {trial.state.name.lower()}, value {value}; best {best}")


@contextmanager
def trial_bar(plan: Plan, done: int):
    """A bar over the study's trials on a terminal (yields `advance(finished)`); nothing elsewhere."""
    if not console.is_terminal:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"study {plan.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task("trials", total=plan.trials, completed=done)
        yield lambda n: bar.update(task, completed=min(n, plan.trials))


def run_study(plan: Plan, folder: Path, jobs: int = 1, resume: bool = False) -> Any:
    """Run (or go on with) the study until `plan.trials` trials have finished (complete or pruned)."""
    if not resume:
        save_plan(plan, folder)
    study = open_study(plan, folder, create=not resume)
    if resume:
        requeued = recover_orphans(study)
        if requeued:
            console.print(f"re-running {requeued} trial(s) that a stopped process left unfinished")
    remaining = plan.trials - finished(study)
    console.print(f"study {plan.name}: {finished(study)} of {plan.trials} trials finished; {plan.metric} "
                  f"({plan.direction}), sampler {plan.sampler}, pruner {plan.pruner}; {folder}")  # fmt: skip
    if remaining > 0 and jobs <= 1:
        with trial_bar(plan, finished(study)) as advance:
            study.optimize(objective(plan, folder), n_trials=remaining, timeout=plan.timeout, catch=(UserError,),
                           callbacks=[*callbacks(plan), lambda st, tr: advance(finished(st))])  # fmt: skip
    elif remaining > 0:
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // jobs)
        quotas = [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(str(folder), q, threads)) for q in quotas if q]
        for p in procs:
            p.start()
        with trial_bar(plan, finished(study)) as advance:
            while any(p.is_alive() for p in procs):  # the workers write the storage; the bar reads it
                for p in procs:
                    p.join(timeout=2.0)
                advance(finished(open_study(plan, folder)))
    from nnrecipe.tune.report import write_study_report

    return write_study_report(open_study(plan, folder), plan, folder)


def recipe_raw(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe file as raw data with --set applied and its relative paths anchored (trials run elsewhere)."""
    from nnrecipe.recipe import load_recipe

    recipe = load_recipe(path, overrides)  # validates and anchors paths relative to the recipe file
    return yaml.safe_load(recipe.to_yaml())
