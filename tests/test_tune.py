"""nnrecipe tune: a study finds better settings than its worst, prunes a bad region, survives kill -9, runs
in two processes on one storage, refuses bad spaces in one line, and tunes an RL recipe too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import in_process

from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import validate_recipe
from nnrecipe.run_index import list_runs, to_clean
from nnrecipe.runs import Run
from nnrecipe.tasks import get_family
from nnrecipe.tune.space import parse_param
from nnrecipe.tune.study import job_shares, load_plan, new_plan, open_study, run_study, save_plan

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "data": {"source": "digits", "limit": 600},
    "model": {"name": "convnet"},
    "train": {"epochs": 3, "batch_size": 64, "seed": 0},
    "track": {"progress": False, "plots": False, "tensorboard": False},
}


def digits_raw(tmp_path, **track):
    raw = json.loads(json.dumps(BASE))
    raw["track"] |= {"runs_dir": str(tmp_path / "runs"), **track}
    return raw


def plan(tmp_path, params, trials, **options):
    defaults = {"sampler": "random", "pruner": "none", "metric": None, "direction": None, "seed": 0, "name": "s"}
    return new_plan(digits_raw(tmp_path), None, params, trials, **(defaults | options))


def cli(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "nnrecipe.cli", *args], cwd=cwd, capture_output=True, text=True, **kw)


def states(folder: Path) -> list[str]:
    p = load_plan(folder)
    return [t.state.name for t in open_study(p, folder).get_trials()]


def test_a_study_beats_its_worst_trial_and_leaves_runs_a_report_and_best_yaml(tmp_path):
    p = plan(tmp_path, ["optim.lr=loguniform(1e-5, 0.1)"], 6)
    folder = tmp_path / "runs" / "s"
    report = run_study(p, folder)
    values = [t["value"] for t in report["trials"]]
    assert report["states"]["complete"] == 6 and max(values) > min(values) + 0.2, values
    for t in report["trials"]:  # every trial an ordinary run
        assert (folder / t["run"] / "report.json").is_file() and (folder / t["run"] / "recipe.yaml").is_file()
    best = validate_recipe(yaml.safe_load((folder / "best.yaml").read_text()))
    assert best.optim.lr == pytest.approx(report["best"]["params"]["optim.lr"])
    assert str(best.track.runs_dir) == str(tmp_path / "runs")  # trains beside, not inside, the study
    md = (folder / "report.md").read_text()
    assert "**Best: trial" in md and md.count("| complete |") == 6 and (folder / "plots" / "history.png").is_file()


def test_the_median_pruner_stops_trials_in_a_bad_region_within_an_epoch(tmp_path):
    p = plan(tmp_path, ["optim.lr=choice(0.05, 0.00001)"], 6, pruner="median")
    folder = tmp_path / "runs" / "s"
    save_plan(p, folder)
    for _ in range(2):  # the median pruner waits for two finished trials: make them good ones
        open_study(p, folder, create=True).enqueue_trial({"optim.lr": 0.05})
    report = run_study(p, folder)
    pruned = [t for t in report["trials"] if t["state"] == "pruned"]
    assert pruned and all(t["params"]["optim.lr"] == 0.00001 and t["epochs"] < 3 for t in pruned), report["trials"]
    assert report["states"]["complete"] + len(pruned) == 6
    # `clean --keep-best 1` keeps the study's best trial only: each trial was a recipe of its own (nothing was
    # ever cleaned) and pruned trials, which nothing resumes, were never cleaned either
    cleaned = {r.path.name for r in to_clean(list_runs(tmp_path / "runs"), keep_best=1)}
    (kept,) = [t for t in report["trials"] if t["run"] not in cleaned]
    assert kept["value"] == report["best"]["value"] and len(cleaned) == 5, cleaned


def test_a_diverging_trial_counts_as_pruned_not_failed(tmp_path):
    """A learning rate that blows the loss up is a bad region of the space: the sampler should learn from it."""
    p = plan(tmp_path, ["optim.lr=choice(0.01, 1000000.0)"], 1)
    folder = tmp_path / "runs" / "s"
    save_plan(p, folder)
    open_study(p, folder, create=True).enqueue_trial({"optim.lr": 1e6})
    report = run_study(p, folder)
    (trial,) = report["trials"]
    assert trial["state"] == "pruned" and "NaN/inf" in trial["diverged"], trial
    assert "| pruned (diverged) |" in (folder / "report.md").read_text()


def test_bad_spaces_are_one_line_errors_before_any_trial(tmp_path, monkeypatch):
    with pytest.raises(RecipeError) as typo:  # was "--param ...: 0.0001 is not a valid optim.lrr: recipe error: ..."
        plan(tmp_path, ["optim.lrr=loguniform(1e-4, 0.1)"], 2)
    assert str(typo.value).startswith("tune optim.lrr=loguniform(0.0001, 0.1): unknown field 'optim.lrr' in optim")
    assert "did you mean 'optim.lr'" in str(typo.value) and "not a valid" not in str(typo.value)
    with pytest.raises(RecipeError, match="a log scale needs bounds above 0"):
        parse_param("optim.lr=loguniform(0, 0.1)")
    with pytest.raises(RecipeError, match="low bound must be below"):
        parse_param("train.epochs=int(5, 2)")
    with pytest.raises(RecipeError, match=r"optim.lr: bounds must be finite numbers \(got 0.001, nan\)"):
        parse_param("optim.lr=loguniform(1e-3, nan)")  # "the low bound must be below the high one"
    with pytest.raises(RecipeError, match="optim.name: 'sgd' listed more than once in choice"):
        parse_param("optim.name=choice(sgd, adamw, sgd)")  # drawn twice as often; a grid ran it twice
    with pytest.raises(RecipeError, match="not a valid train.batch_size"):
        plan(tmp_path, ["train.batch_size=choice(32, 0)"], 2)
    # SQLAlchemy's traceback, after the study's folder was made; the URL's password is not printed
    with pytest.raises(
        UserError, match=r"--storage postgresql://u:\*\*\*@127.0.0.1:1/db: \S"
    ):  # no driver, or no server
        plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2, storage="postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(UserError, match="--storage bogus://x: Can't load plugin"):
        plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2, storage="bogus://x")
    with (
        monkeypatch.context() as m,
        pytest.raises(
            UserError,
            match=r"--storage mysql\+pymysql://u@h/db: its database driver pymysql is missing: pip install pymysql$",
        ),
    ):  # Optuna's "Failed to import DB access module ... Please install appropriate one" named none
        m.setitem(sys.modules, "pymysql", None)
        plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2, storage="mysql+pymysql://u@h/db")
    with pytest.raises(RecipeError, match=r"--jobs: at least 1 \(got 0\)"):  # it ran one process, silently
        run_study(plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2), tmp_path / "jobs", jobs=0)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "jobs").exists()
    for seed in (-5, 2**70):  # NumPy's seeding traceback, after the recipe was read
        with pytest.raises(RecipeError, match="--seed: a seed from 0 to 4294967295"):
            plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2, seed=seed)
    with pytest.raises(RecipeError, match="--sampler grid: every parameter must be"):
        plan(tmp_path, ["optim.lr=uniform(0.01, 0.1)"], 2, sampler="grid")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_raw(tmp_path)))
    code, output = in_process("tune", tmp_path / "r.yaml", "--param", "optim.lr=between(1,2)")
    assert code == 2 and "unknown kind 'between'" in output, output


@pytest.mark.parametrize(
    "text, problem",
    [
        ("int(16, 64, step=-16)", r"step must be a whole number of 1 or more \(got -16\)"),  # Optuna's traceback
        ("int(16, 64, step=0)", r"step must be a whole number of 1 or more \(got 0\)"),  # silently step 1
        ("int(16, 64, step=2.5)", r"step must be a whole number of 1 or more \(got 2.5\)"),  # sampled 42
        (
            "int(16, 64, step=16, log=true)",
            "a log scale samples without a step; give step or log=true, not both",
        ),  # Optuna's traceback
        ("int(16, 64, log=maybe)", r"log=true or log=false \(got 'maybe'\)"),  # a log scale
        ("int(16, 60, step=16)", r"60 is not LOW \+ a whole number of steps.*int\(16, 48, step=16\) or int\(16, 64"),
        (
            "int(16, 20, step=16)",
            r"20 is not LOW \+ a whole number of steps, so it would never be tried; int\(16, 32, step=16\)$",
        ),
    ],
)
def test_an_int_step_is_one_optuna_samples_as_written(tmp_path, text, problem):
    with pytest.raises(RecipeError, match=f"--param train.batch_size: {problem}"):
        parse_param(f"train.batch_size={text}")


def test_an_int_step_error_stops_the_cli_before_any_study_folder(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_raw(tmp_path)))
    code, output = in_process("tune", tmp_path / "r.yaml", "--param", "train.batch_size=int(16,64,step=-16)")
    assert code == 2 and "step must be a whole number" in output, output
    assert not (tmp_path / "runs").exists()  # the study's folder was made before Optuna's traceback
    assert parse_param("train.batch_size=int(16, 64, step=16)").step == 16


def test_a_metric_no_run_logs_stops_the_study_at_its_first_trial(tmp_path):
    """--metric val_acc (a typo): every trial trained in full and failed the same way, each with a traceback."""
    p = plan(tmp_path, ["optim.lr=loguniform(0.01, 0.1)"], 4, metric="val_acc")
    with pytest.raises(RecipeError, match="--metric: 'val_acc' is not logged by this run; logged: .*val_accuracy"):
        run_study(p, tmp_path / "runs" / "s")
    assert states(tmp_path / "runs" / "s") == ["FAIL"]


def study_in_trial_1(tmp_path, name: str, epochs: int, trials: int):
    """A `nnrecipe tune` process on a digits recipe, returned once its second trial (trial 1) is training."""
    raw = digits_raw(tmp_path) | {"train": BASE["train"] | {"epochs": epochs}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    args = ["tune", str(tmp_path / "r.yaml"), "--param", "optim.lr=loguniform(0.01, 0.1)", "--trials", str(trials),
            "--pruner", "none", "--study", name]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "nnrecipe.cli", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    folder = tmp_path / "runs" / name
    deadline = time.time() + 120
    while not (folder / "trial-0001" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    return proc, folder


@pytest.mark.slow
def test_kill_9_mid_study_then_resume_finishes_exactly_the_planned_trials(tmp_path):
    proc, folder = study_in_trial_1(tmp_path, "k", epochs=6, trials=4)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of trial 1
    proc.wait()
    assert states(folder).count("COMPLETE") == 1 and "RUNNING" in states(folder)
    code, output = in_process("tune", "--resume", folder)  # in this process: the stop above was a real one's
    assert code == 0, output[-2000:]
    after = states(folder)
    assert after.count("COMPLETE") == 4 and after.count("FAIL") == 1 and "RUNNING" not in after
    study = open_study(load_plan(folder), folder)
    rerun = [t for t in study.get_trials() if t.user_attrs.get("rerun_of") == 1]
    assert len(rerun) == 1 and rerun[0].params == study.trials[1].params  # the orphan's settings ran again
    fresh = [t.params["optim.lr"] for t in study.trials if "rerun_of" not in t.user_attrs]
    assert len(set(fresh)) == len(fresh) == 4  # the resumed process proposed trial 0's and 1's values again


@pytest.mark.slow
def test_ctrl_c_stops_the_running_trial_cleanly_and_resume_runs_it_again(tmp_path):
    proc, folder = study_in_trial_1(tmp_path, "c", epochs=8, trials=3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    interrupted = json.loads((folder / "trial-0001" / "run.json").read_text())["status"]
    assert interrupted == "interrupted" and states(folder) == ["COMPLETE", "FAIL"]  # nothing left RUNNING
    code, output = in_process("tune", "--resume", folder)  # in this process: the stop above was a real one's
    assert code == 0, output[-2000:]
    assert (
        states(folder).count("COMPLETE") == 3 and json.loads((folder / "report.json").read_text())["interrupted"] == []
    )


@pytest.mark.slow
def test_two_processes_on_one_storage_make_one_consistent_study(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_raw(tmp_path)))
    out = cli("tune", str(tmp_path / "r.yaml"), "--param", "optim.lr=loguniform(0.001, 0.1)", "--trials", "4",
              "--jobs", "2", "--pruner", "none", "--metric", "val_accuracy", "--study", "par", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    study = open_study(load_plan(tmp_path / "runs" / "par"), tmp_path / "runs" / "par")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # two worker processes shared the work
    assert len({t.user_attrs["run"] for t in trials}) == 4
    assert len({t.params["optim.lr"] for t in trials}) == 4  # both workers proposed the same values in turn


def test_jobs_beyond_the_remaining_trials_share_the_cores_among_those_that_start():
    assert job_shares(5, 2, 16) == ([3, 2], 8)
    assert job_shares(2, 8, 16) == ([1, 1], 8)  # gave 2 threads each, 8 workers' worth of cores left idle
    assert job_shares(3, 3, 2) == ([1, 1, 1], 1)


def test_a_study_name_in_use_is_joined_only_with_the_same_plan(tmp_path):
    """Another space under a used --study added its trials to the old study and replaced its study.json."""
    folder = tmp_path / "runs" / "s"
    run_study(plan(tmp_path, ["optim.lr=choice(0.05)"], 1), folder)
    for resume in (True, False):  # the command line goes on with a study its --study names (resume=True)
        with pytest.raises(UserError, match=r"--study s: .* holds a study with another space; .* tune --resume"):
            run_study(plan(tmp_path, ["optim.lr=choice(0.01)"], 2), folder, resume=resume)
    assert load_plan(folder).space == ["optim.lr=choice(0.05)"] and states(folder) == ["COMPLETE"]
    run_study(plan(tmp_path, ["optim.lr=choice(0.05)"], 2), folder, resume=True)  # the same plan, more trials
    assert states(folder) == ["COMPLETE", "COMPLETE"] and load_plan(folder).trials == 2  # the new total kept


def test_resume_takes_a_new_trial_total_and_refuses_the_options_of_a_new_plan(tmp_path):
    """`tune --resume DIR --param ...` (or --trials, --seed, a recipe) ran the old plan, the options unread."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    folder = tmp_path / "runs" / "s"
    run_study(plan(tmp_path, ["optim.lr=choice(0.05)"], 1), folder)
    for extra, flag in [(["--param", "optim.lr=choice(0.01)"], "--param"), (["--seed", "3"], "--seed")]:
        with pytest.raises(UserError, match=f"{flag}: not with --resume"):
            CliRunner().invoke(app, ["tune", "--resume", str(folder), *extra], catch_exceptions=False)
    res = CliRunner().invoke(app, ["tune", "--resume", str(folder), "--trials", "2"], catch_exceptions=False)
    assert res.exit_code == 0 and states(folder) == ["COMPLETE", "COMPLETE"] and load_plan(folder).trials == 2


def frozenlake_plan(tmp_path, param: str, trials: int):
    """A short FrozenLake Q-learning study: 1,500 episodes, evaluated every 500."""
    raw = yaml.safe_load((ROOT / "recipes" / "frozenlake-qlearning.yaml").read_text())
    raw["tabular"] |= {"episodes": 1500, "log_every": 500}
    raw["eval"] = {"episodes": 100}
    raw["track"] = {"runs_dir": str(tmp_path / "runs"), "progress": False, "plots": False, "tensorboard": False}
    options = {"sampler": "random", "pruner": "median", "metric": None, "direction": None, "seed": 0, "name": "rl"}
    return new_plan(raw, None, [param], trials, **options)


def test_an_rl_study_on_frozenlake_runs(tmp_path):
    p = frozenlake_plan(tmp_path, "tabular.alpha=uniform(0.05, 0.5)", 2)
    report = run_study(p, tmp_path / "runs" / "rl")
    assert report["metric"] == "val_mean_return" and report["states"]["complete"] == 2
    assert all(0 <= t["value"] <= 1 for t in report["trials"])


def test_ddp_trials_report_every_epoch_and_all_processes_stop_when_pruned(tmp_path):
    """--nproc 2: each trial a two-process run under torchrun; rank 0 reports, the pruning decision is shared."""
    import optuna

    p = plan(tmp_path, ["optim.lr=choice(0.05, 0.00001)"], 4, pruner="median", nproc=2)
    folder = tmp_path / "runs" / "s"
    save_plan(p, folder)
    study = open_study(p, folder, create=True)
    lr = optuna.distributions.CategoricalDistribution([0.05, 0.00001])
    for _ in range(2):  # the median pruner's two finished trials, written rather than trained (time)
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.05}, distributions={"optim.lr": lr},
                                                  value=0.4, intermediate_values={1: 0.2, 2: 0.3, 3: 0.4}))  # fmt: skip
    for value in (0.05, 0.00001):
        study.enqueue_trial({"optim.lr": value})
    report = run_study(p, folder)
    good, bad = report["trials"][2:]
    assert [t["state"] for t in report["trials"]] == ["complete", "complete", "complete", "pruned"], report["trials"]
    assert good["epochs"] == 3 and bad["epochs"] < 3 and good["value"] > 0.5
    for t in (good, bad):
        meta = json.loads((folder / t["run"] / "run.json").read_text())
        assert meta["processes"] == 2 and meta["status"] == ("finished" if t is good else "pruned")
        # each process's output kept in the run, for a failed trial to be read after the fact
        assert {p.parent.name for p in (folder / t["run"] / "logs").rglob("stderr.log")} == {"0", "1"}


def test_a_best_trial_added_by_hand_without_a_run_is_reported(tmp_path, recwarn):
    """A study warm-started with a known result (optuna's add_trial) has a best trial that trained no run
    here: the report names it and writes no best.yaml (it was a KeyError once a failed trial left it best)."""
    import optuna

    from nnrecipe.tune.report import write_study_report

    p = plan(tmp_path, ["optim.lr=choice(0.05, 0.00001)"], 1)
    folder = tmp_path / "runs" / "s"
    save_plan(p, folder)
    study = open_study(p, folder, create=True)
    lr = optuna.distributions.CategoricalDistribution([0.05, 0.00001])
    study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.05}, distributions={"optim.lr": lr}, value=0.9))
    report = write_study_report(study, p, folder)
    assert report["best"]["value"] == 0.9 and report["best"]["run"] is None
    assert not (folder / "best.yaml").exists() and (folder / "report.md").is_file()
    assert not [str(w.message) for w in recwarn if "importances" in str(w.message)]  # optuna's, on small studies


def test_rl_trials_are_pruned_after_a_periodic_evaluation(tmp_path):
    """The pruner hears each evaluation of an RL run (its own loop, not the engine's) and stops a bad trial."""
    p = frozenlake_plan(tmp_path, "tabular.alpha=choice(0.3, 0.00001)", 3)
    folder = tmp_path / "runs" / "rl"
    save_plan(p, folder)
    for alpha in (0.3, 0.3, 0.00001):  # two good trials for the median, then a learning rate that learns nothing
        open_study(p, folder, create=True).enqueue_trial({"tabular.alpha": alpha})
    report = run_study(p, folder)
    last = report["trials"][2]
    assert report["states"] == {"complete": 2, "pruned": 1, "fail": 0, "running": 0}, report["trials"]
    assert last["state"] == "pruned" and last["epochs"] < 3
    assert json.loads((folder / last["run"] / "run.json").read_text())["status"] == "pruned"


def test_a_multi_objective_study_keeps_a_pareto_front_of_accuracy_size_and_latency(tmp_path):
    p = plan(tmp_path, ["model.name=choice(convnet, lenet5, mlp)"], 3, sampler="grid",
             metric=["val_accuracy", "parameters", "latency_ms"], pruner=None)  # fmt: skip
    assert p.directions == ["maximize", "minimize", "minimize"] and p.pruner == "none"
    folder = tmp_path / "runs" / "s"
    report = run_study(p, folder)
    trials = {t["params"]["model.name"]: t for t in report["trials"]}
    assert report["states"]["complete"] == 3 and all(len(t["values"]) == 3 for t in trials.values())
    for name, t in trials.items():  # `parameters` is the trained model's size
        run = folder / t["run"]
        recipe = validate_recipe(yaml.safe_load((run / "recipe.yaml").read_text()))
        model = get_family("image_classification").trained(Run(run)).model
        assert t["values"][1] == sum(q.numel() for q in model.parameters()) and recipe.model.name == name
        assert t["values"][2] > 0
    smallest = min(trials.values(), key=lambda t: t["values"][1])
    most_accurate = max(trials.values(), key=lambda t: t["values"][0])
    assert {smallest["number"], most_accurate["number"]} <= set(report["pareto"]), report
    assert report["best"]["number"] == most_accurate["number"]
    assert yaml.safe_load((folder / "best.yaml").read_text())["model"]["name"] == most_accurate["params"]["model.name"]
    assert (folder / "plots" / "pareto.png").is_file() and "Pareto front: trials" in (folder / "report.md").read_text()


def test_multi_objective_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(RecipeError, match="prunes single-objective studies only"):
        plan(tmp_path, ["optim.lr=loguniform(1e-3, 0.1)"], 2, metric=["val_accuracy", "parameters"], pruner="asha")
    with pytest.raises(RecipeError, match="one per --metric"):
        plan(tmp_path, ["optim.lr=loguniform(1e-3, 0.1)"], 2, metric=["val_accuracy", "parameters"],
             direction=["maximize"])  # fmt: skip
    raw = yaml.safe_load((ROOT / "recipes" / "frozenlake-qlearning.yaml").read_text())
    with pytest.raises(RecipeError, match="latency_ms: needs a family that offers export"):
        new_plan(raw, None, ["tabular.alpha=uniform(0.05, 0.5)"], 2, sampler="tpe", pruner=None,
                 metric=["val_mean_return", "latency_ms"], direction=None, seed=0, name="x")  # fmt: skip


def test_families_with_their_own_loop_refuse_multi_process_training(tmp_path):
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    recipe = ROOT / "recipes" / "frozenlake-qlearning.yaml"
    with pytest.raises(UserError, match="--nproc/--nnodes: rl runs train in one process"):
        CliRunner().invoke(app, ["train", str(recipe), "--nproc", "2"], catch_exceptions=False)
    with pytest.raises(RecipeError, match="--nproc: rl runs train in one process"):
        new_plan(yaml.safe_load(recipe.read_text()), None, ["tabular.alpha=uniform(0.05, 0.5)"], 2, sampler="tpe",
                 pruner=None, metric=None, direction=None, seed=0, name="x", nproc=2)  # fmt: skip


def test_a_terminal_shows_a_bar_over_the_trials(tmp_path, monkeypatch):
    """The bar counts finished trials of the planned total (polled from the storage under --jobs)."""
    import io

    from rich.console import Console

    from nnrecipe.tune import study

    out = io.StringIO()
    monkeypatch.setattr(study, "console", Console(file=out, force_terminal=True, width=80))
    with study.trial_bar(plan(tmp_path, ["optim.lr=loguniform(0.01,0.1)"], 4), 1) as advance:
        advance(3)
        advance(9)  # never past the plan
    text = out.getvalue()
    assert "study s" in text and "1/4" in text and "4/4" in text and "9/4" not in text


def test_a_stop_before_training_leaves_no_run_folder_and_resume_runs_the_trial_again(tmp_path, monkeypatch):
    """A --jobs worker SIGTERM'd before its trial's training loop began (spawned, it kept Python's default)
    died at once: its trial stayed RUNNING and its run folder said "created" for ever."""
    from nnrecipe.tune.study import worker

    class Killed(Exception):  # what the test's process does with a SIGTERM nothing else took over
        pass

    def killed(signum, frame):
        raise Killed

    def stopped_while_loading(recipe, run, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # reading the data, building the model
        raise AssertionError("the SIGTERM was not delivered")

    p = plan(tmp_path, ["optim.lr=choice(0.05, 0.01, 0.002)"], 1)
    folder = tmp_path / "runs" / "s"
    save_plan(p, folder)
    open_study(p, folder, create=True)
    family = get_family("image_classification")
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        with monkeypatch.context() as m:
            m.setattr(family, "train", stopped_while_loading)
            with pytest.raises(SystemExit) as ended:  # the stop is an exit code, not a traceback
                worker(str(folder), 1, None)
        assert ended.value.code == 130
        with monkeypatch.context() as m:  # a worker still starting (importing torch, opening the storage)
            m.setattr("nnrecipe.tune.study.load_plan", lambda f: stopped_while_loading(None, None))
            with pytest.raises(SystemExit) as ended:
                worker(str(folder), 1, None)
        assert ended.value.code == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    (stopped,) = open_study(p, folder).get_trials()
    assert stopped.state.name == "FAIL" and stopped.user_attrs["interrupted"] is True
    assert not (folder / "trial-0000").exists()  # nothing was trained
    run_study(p, folder, resume=True)
    trials = open_study(p, folder).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].params == stopped.params
    assert json.loads((folder / trials[1].user_attrs["run"] / "run.json").read_text())["status"] == "finished"
