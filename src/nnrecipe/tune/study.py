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

Several objectives (`--metric val_accuracy --metric parameters`) make a multi-objective study: Optuna keeps
the Pareto front (TPE or NSGA-II sample it), the report draws it, and `best.yaml` is the front's trial best on
the first objective. Optuna prunes single-objective studies only, so such a study runs unpruned.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.engine.config import check_seed
from nnrecipe.engine.loop import Callback, Diverged, console
from nnrecipe.engine.signals import sigterm_passed_on, wait_for_launched
from nnrecipe.errors import RecipeError, UserError, first_line
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run, discard_untrained
from nnrecipe.tasks.family import get_family
from nnrecipe.tune.objectives import MEASURED, check_measurable, measure
from nnrecipe.tune.space import Param, check_space, load_space, parse_param, with_values

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("none", "median", "asha", "hyperband")
PLAN = "study.json"
JOURNAL = "journal.log"


@dataclass
class Plan:
    """What a study was asked to do, saved as study.json so --resume and every worker do the same."""

    recipe: dict[str, Any]  # the raw recipe (file + --set), paths anchored
    space: list[str]  # the parameters as NAME=KIND(ARGS)
    trials: int
    metrics: list[str]  # logged keys (val_accuracy) or measured ones (parameters, latency_ms); the first leads
    directions: list[str]  # maximize | minimize, one per metric
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    storage: str | None = None  # an RDB URL; None = the journal file in the study directory
    name: str = "study"
    timeout: float | None = None
    nproc: int = 1  # processes per trial (DDP through torchrun)
    source: str = ""  # the recipe file
    created: float = field(default_factory=time.time)

    def params(self) -> list[Param]:
        return [parse_param(p) for p in self.space]

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def direction(self) -> str:
        return self.directions[0]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


def parse_duration(text: str | None) -> float | None:
    """'2h', '30m', '90s' or plain seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hms]?)\s*", text)
    if not m:
        raise RecipeError(f"--timeout: expected a duration like 2h, 30m, 90s or seconds (got {text!r})")
    return float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]


def objective_of(family, metrics: list[str], directions: list[str]) -> tuple[list[str], list[str]]:
    """(keys, directions): the family's primary validation metric unless told otherwise; a direction per
    metric, each defaulting to its own (a measured one's, the family's for its metric, min for a loss)."""
    keys = list(metrics) or [f"val_{family.metric.name}"]
    if len(set(keys)) < len(keys):
        raise RecipeError(f"--metric: each objective once (got {', '.join(keys)})")
    if directions and len(directions) != len(keys):
        raise RecipeError(f"--direction: one per --metric ({len(keys)}), or none for their own (got {len(directions)})")
    out = []
    for key, direction in zip(keys, directions or [None] * len(keys), strict=True):
        if direction is None and key in MEASURED:
            direction = MEASURED[key][0]
        elif direction is None:
            base = key.removeprefix("val_").removeprefix("train_")
            mode = family.metric.mode if base == family.metric.name else ("min" if "loss" in base else "max")
            direction = "maximize" if mode == "max" else "minimize"
        if direction not in ("maximize", "minimize"):
            raise RecipeError(f"--direction: maximize or minimize (got {direction!r})")
        out.append(direction)
    check_measurable(family, keys)
    return keys, out


def new_plan(
    recipe_raw: dict[str, Any], space_file: Path | None, params: list[str], trials: int, **options: Any
) -> Plan:
    """Validate everything (the recipe, every parameter's range, sampler and pruner) before any trial."""
    recipe = validate_recipe(recipe_raw)
    family = get_family(recipe.task)
    if trials < 1:
        raise RecipeError(f"--trials: at least 1 (got {trials})")
    check_seed(options.get("seed"))
    if options.get("storage"):
        rdb_storage(options["storage"])  # reachable and usable before the study's folder is made
    space = load_space(space_file, params)
    check_space(recipe_raw, space)
    keys, directions = objective_of(family, as_list(options.pop("metric")), as_list(options.pop("direction")))
    multi = len(keys) > 1
    if options.get("pruner") is None:  # Optuna prunes single-objective studies only
        options["pruner"] = "none" if multi else "median"
    for flag, value, allowed in (("--sampler", options["sampler"], SAMPLERS), ("--pruner", options["pruner"], PRUNERS)):
        if value not in allowed:
            raise RecipeError(f"{flag}: one of {', '.join(allowed)} (got {value!r})")
    if options["sampler"] == "grid" and any(p.kind not in ("choice", "int") for p in space):
        raise RecipeError("--sampler grid: every parameter must be choice(...) or int(...) (a grid has finite points)")
    if multi and options["pruner"] != "none":
        raise RecipeError(f"--pruner {options['pruner']}: Optuna prunes single-objective studies only; "
                          f"a study of {len(keys)} objectives runs with --pruner none")  # fmt: skip
    if options.get("nproc", 1) < 1:
        raise RecipeError(f"--nproc: at least 1 (got {options['nproc']})")
    if options.get("nproc", 1) > 1 and not family.multi_process:
        raise RecipeError(f"--nproc: {family.name} runs train in one process")
    if multi and options["sampler"] == "cmaes":
        raise RecipeError("--sampler cmaes: single-objective only; use tpe or nsga2 for several objectives")
    return Plan(recipe_raw, [p.describe() for p in space], trials, keys, directions, **options)


def as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def make_sampler(plan: Plan):
    """The plan's sampler, seeded per trial (tune/seeding.py: one seed per process made every worker, and
    every --resume, propose the same parameters again)."""
    import optuna

    from nnrecipe.tune.seeding import PerTrialSeed

    if plan.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler needs it)
        except ImportError:
            raise UserError("--sampler cmaes: needs the `cmaes` package (pip install cmaes)") from None
    if plan.sampler == "grid":  # every parameter is choice or int there
        grid = {p.name: p.choices or list(range(p.low, p.high + 1, p.step or 1)) for p in plan.params()}
    population = max(4, min(50, plan.trials // 4))
    make = {
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda seed: optuna.samplers.GridSampler(grid, seed=seed),
        "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=population),
        "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    }[plan.sampler]
    return PerTrialSeed(make, plan.seed)


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
        return rdb_storage(plan.storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}  # pip names


def rdb_storage(url: str):
    """Optuna's storage at a database URL; a URL it cannot use (unknown scheme, missing driver, database
    out of reach) is one line naming --storage, not SQLAlchemy's traceback."""
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return RDBStorage(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        first = first_line(e)
        driver = e.__cause__ or e.__context__  # Optuna said "Please install appropriate one", not which
        if isinstance(e, ImportError) and isinstance(driver, ModuleNotFoundError) and driver.name:
            first = f"its database driver {driver.name} is missing: pip install {DRIVERS.get(driver.name, driver.name)}"
        try:  # the URL may hold a password: never print it
            url = make_url(url).render_as_string(hide_password=True)
        except (SQLAlchemyError, ValueError):
            url = "(the URL given)"
        raise UserError(f"--storage {url}: {first}") from None


def open_study(plan: Plan, folder: Path, create: bool = False):
    import optuna

    # Errors only: a failed trial is announced in one line below (Optuna's warning carried its traceback)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    kw = {"storage": storage_of(plan, folder), "sampler": make_sampler(plan), "pruner": make_pruner(plan)}
    if create:
        return optuna.create_study(study_name=plan.name, directions=plan.directions, load_if_exists=True, **kw)
    return optuna.load_study(study_name=plan.name, **kw)


class MetricNotLogged(UserError):
    """--metric names something the runs do not log: every trial would train in full and fail the same way, so
    the study stops at the first (it ran them all, each ending in this error)."""


class PruneTrial(Callback):
    """Reports the objective to Optuna after every epoch (or RL evaluation); a trial its pruner stops ends
    there, marked pruned."""

    def __init__(self, trial, key: str):
        self.trial, self.key = trial, key

    def after_epoch(self, trainer, row: dict[str, Any]) -> None:
        if self.after_evaluation(trainer.state.epoch, row):
            trainer.state.status = "pruned"

    def after_evaluation(self, step: int, row: dict[str, Any]) -> bool:
        """Report `row`'s objective at `step`; True when the pruner stops the trial here (RL calls this after
        each periodic evaluation)."""
        if self.key not in row:
            return False
        self.trial.report(float(row[self.key]), step)
        if not self.trial.should_prune():
            return False
        console.print(f"trial {self.trial.number}: pruned at {step}")
        return True


def objective(plan: Plan, folder: Path):
    """The function Optuna calls: one ordinary run per trial, its best epoch's metric the value."""
    import optuna

    params = plan.params()

    def run_trial(trial) -> float | list[float]:
        try:
            return one_trial(trial)
        except UserError as e:  # the trial fails (Optuna catches it); its reason is announced in one line
            trial.set_user_attr("error", first_line(e))
            raise

    def one_trial(trial) -> float | list[float]:
        values = {p.name: p.suggest(trial) for p in params}
        raw = with_values(plan.recipe, values)
        raw.setdefault("track", {}).update(
            {"runs_dir": str(folder), "name": f"trial-{trial.number:04d}", "progress": False}
        )
        recipe = validate_recipe(raw)
        family = get_family(recipe.task)
        run = create_run(recipe, folder.name)  # its trials are one recipe's runs: `clean` keeps the study's best
        start = time.perf_counter()
        try:
            for key, value in (("run", run.dir.name), ("host", socket.gethostname()), ("pid", os.getpid())):
                trial.set_user_attr(key, value)
            if plan.nproc > 1:
                result = train_in_processes(plan, folder, trial.number, run)
            else:
                pruning = [PruneTrial(trial, plan.metric)] if family.takes_callbacks and not plan.multi else []
                result = family.train(recipe, run, callbacks=pruning)
        except KeyboardInterrupt:  # a stop before the training loop took it over (it saves and returns
            trial.set_user_attr("interrupted", True)  # "interrupted"): `tune --resume` runs the trial again
            discard_untrained(run)
            raise
        except Diverged as e:  # a bad region of the space, not a broken study: stopped early, like pruning
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
            trial.set_user_attr("diverged", str(e).split(";")[0])
            console.print(f"trial {trial.number}: diverged ({str(e).split(';')[0]}); counted as pruned")
            raise optuna.TrialPruned() from None
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        if result.get("status") == "interrupted":
            trial.set_user_attr("interrupted", True)
            trial.study.stop()
            raise UserError(f"trial {trial.number} interrupted; `nnrecipe tune --resume {folder}` runs it again")
        if result.get("status") == "pruned":
            raise optuna.TrialPruned()
        logged = [(k, d) for k, d in zip(plan.metrics, plan.directions, strict=True) if k not in MEASURED]
        try:
            row = best_row(result, [k for k, _ in logged], logged[0][1]) if logged else {}
        except MetricNotLogged as e:
            trial.set_user_attr("metric_error", str(e))
            trial.study.stop()
            raise
        row |= measure(family, run, plan.metrics)
        for key in plan.metrics:
            trial.set_user_attr(f"objective:{key}", row[key])
        values = [float(row[k]) for k in plan.metrics]
        return values if plan.multi else values[0]

    return run_trial


def train_in_processes(plan: Plan, folder: Path, number: int, run) -> dict[str, Any]:
    """Train the trial's run with `plan.nproc` DDP processes (tune/trial.py) and read back what it logged."""
    import subprocess

    from nnrecipe.engine.distributed import torchrun_command
    from nnrecipe.engine.tracking import read_metrics

    args = [str(folder), str(number), str(run.dir)]
    logs = run.dir / "logs"
    command = torchrun_command(args, 1, plan.nproc, 0, None, module="nnrecipe.tune.trial", log_dir=logs)
    code = wait_for_launched(subprocess.Popen(command))  # a stop lets the workers save
    status = run.meta().get("status")
    if code == 130 or status == "interrupted":
        return {"status": "interrupted", "run": str(run.dir)}
    if code != 0:
        raise UserError(f"trial {number}: its {plan.nproc} processes failed (exit {code}); their output is in {logs}")
    return {"status": status, "run": str(run.dir), "history": read_metrics(run.dir / "metrics.jsonl")}


def best_row(result: dict[str, Any], keys: list[str], direction: str) -> dict[str, Any]:
    """The logged objectives at the best epoch of the first; for runs without epochs (RL), the final summary's."""
    rows = [row for row in result.get("history") or [] if keys[0] in row]
    if rows:
        row = (max if direction == "maximize" else min)(rows, key=lambda r: r[keys[0]])
    else:
        row = {k: float(result[k.removeprefix("val_")]) for k in keys if k.removeprefix("val_") in result}
    missing = [k for k in keys if k not in row]
    if missing:
        logged = sorted({k for r in result.get("history") or [] for k in r} | set(result))
        raise MetricNotLogged(f"--metric: {missing[0]!r} is not logged by this run; logged: {', '.join(logged)}")
    return row


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


def joinable(plan: Plan, folder: Path) -> Plan | None:
    """The study already in `folder` (None: a new one), which may be joined (another machine running the same
    command, or more --trials) only with the same plan: another recipe or space added its trials to the
    study's and replaced its study.json."""
    if not (Path(folder) / PLAN).is_file():
        return None
    saved = load_plan(folder)
    before, now = asdict(saved), asdict(plan)
    free = ("created", "timeout", "source", "trials")
    differ = [k for k in now if k not in free and before.get(k) != now[k]]
    if differ:
        raise UserError(f"--study {plan.name}: {folder} holds a study with another {', '.join(differ)}; "
                        f"go on with it by `nnrecipe tune --resume {folder}`, or give another --study")  # fmt: skip
    return saved


def save_plan(plan: Plan, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PLAN + ".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    tmp.replace(folder / PLAN)


def load_plan(folder: Path) -> Plan:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise UserError(f"{folder}: not a study directory (no {PLAN})")
    data = json.loads(path.read_text())
    if "metric" in data:  # a single-objective study.json from before multi-objective studies
        data["metrics"], data["directions"] = [data.pop("metric")], [data.pop("direction")]
    return Plan(**data)


STOPPED = 130  # a --jobs worker's exit code when Ctrl-C or a SIGTERM stopped it, as the CLI's


def worker(plan_dir: str, quota: int, threads: int | None) -> None:
    """One process of a --jobs study: its share of the trials on the shared storage. A SIGTERM (passed on by
    the parent) stops it as Ctrl-C does, even while it starts: spawned, it kept Python's default and died at
    once outside a training loop, its trial left RUNNING and its run "created"."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        folder = Path(plan_dir)
        plan = load_plan(folder)
        study = open_study(plan, folder)
        study.optimize(objective(plan, folder), n_trials=quota, timeout=plan.timeout, catch=(UserError,),
                       callbacks=callbacks(plan))  # fmt: skip
    except KeyboardInterrupt:  # a trial it began is marked interrupted; the parent reports the study
        sys.exit(STOPPED)  # no traceback: multiprocessing printed one when the stop came in while starting


def callbacks(plan: Plan) -> list:
    """Announce each finished trial; stop once the study holds the planned number (other workers count)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    return [announce, MaxTrialsCallback(plan.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]


def announce(study, trial) -> None:
    """One line per finished trial: number, state, value, best so far (the Pareto front's size for several)."""
    if len(study.directions) > 1:
        values = "-" if trial.values is None else ", ".join(f"{v:.4g}" for v in trial.values)
        front = len(study.best_trials)
        console.print(
            f"trial {trial.number}: {trial.state.name.lower()}, values {values}; Pareto front {front} trial(s)"
        )
        return
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    try:
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "-"
    why = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    console.print(f"trial {trial.number}: {trial.state.name.lower()}{why}, value {value}; best {best}")


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


def job_shares(remaining: int, jobs: int, cores: int) -> tuple[list[int], int]:
    """The trials each worker process runs, and the threads each gets: no more workers than trials, so
    the cores are shared among the workers that start (--jobs 8 for 2 trials gave each a quarter of 1/8)."""
    workers = min(jobs, remaining)
    return [remaining // workers + (i < remaining % workers) for i in range(workers)], max(1, cores // workers)


def run_study(plan: Plan, folder: Path, jobs: int = 1, resume: bool = False) -> Any:
    """Run (or go on with) the study until `plan.trials` trials have finished (complete or pruned)."""
    if jobs < 1:
        raise RecipeError(f"--jobs: at least 1 (got {jobs})")
    saved = joinable(plan, folder)  # `tune RECIPE --study NAME` on a study in use goes on with it (resume)
    if not resume or saved is None or saved.trials != plan.trials:  # a new study, or a new total for this one
        save_plan(plan, folder)
    study = open_study(plan, folder, create=not resume)
    if resume:
        requeued = recover_orphans(study)
        if requeued:
            console.print(f"re-running {requeued} trial(s) that a stopped process left unfinished")
    remaining = plan.trials - finished(study)
    goal = ", ".join(f"{k} ({d})" for k, d in zip(plan.metrics, plan.directions, strict=True))
    console.print(f"study {plan.name}: {finished(study)} of {plan.trials} trials finished; {goal}, "
                  f"sampler {plan.sampler}, pruner {plan.pruner}; {folder}")  # fmt: skip
    stopped = False  # a --jobs worker was stopped (Ctrl-C, SIGTERM), perhaps before any trial of its began
    if remaining > 0 and jobs <= 1:
        with trial_bar(plan, finished(study)) as advance:
            study.optimize(objective(plan, folder), n_trials=remaining, timeout=plan.timeout, catch=(UserError,),
                           callbacks=[*callbacks(plan), lambda st, tr: advance(finished(st))])  # fmt: skip
    elif remaining > 0:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        quotas, threads = job_shares(remaining, jobs, os.cpu_count() or 1)
        procs = [ctx.Process(target=worker, args=(str(folder), q, threads)) for q in quotas]
        alive = lambda: [p.pid for p in procs if p.is_alive()]  # noqa: E731
        with trial_bar(plan, finished(study)) as advance, sigterm_passed_on(alive) as passed:  # each saves its trial
            for p in procs:
                if not passed.is_set():  # a SIGTERM while they start: the rest never start (it killed this
                    p.start()  # process before, and the workers already started ran their trials to the end)
            while any(p.is_alive() for p in procs):  # the workers write the storage; the bar reads it
                for p in procs:
                    if p.is_alive():
                        p.join(timeout=2.0)
                advance(finished(open_study(plan, folder)))
        stopped = passed.is_set() or any(p.exitcode == STOPPED for p in procs)  # or one stopped alone
        if stopped:
            console.print(f"study {plan.name} stopped: {finished(open_study(plan, folder))} of {plan.trials} trials "
                          f"finished; `nnrecipe tune --resume {folder}` goes on")  # fmt: skip
    from nnrecipe.tune.report import write_study_report

    study = open_study(plan, folder)
    wrong = [t.user_attrs["metric_error"] for t in study.get_trials() if "metric_error" in t.user_attrs]
    if wrong:
        raise RecipeError(wrong[0])
    return write_study_report(study, plan, folder) | {"stopped": stopped}


def recipe_raw(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe file as raw data with --set applied and its relative paths anchored (trials run elsewhere)."""
    from nnrecipe.recipe import load_recipe

    recipe = load_recipe(path, overrides)  # validates and anchors paths relative to the recipe file
    return yaml.safe_load(recipe.to_yaml())
