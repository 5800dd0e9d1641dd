"""Many runs: `nnrecipe runs` lists them with their primary metric, `compare` puts them side by side with
overlaid curves, `clean --keep-best N` removes only the checkpoints of finished runs outside each recipe's best."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nnrecipe.cli import app
from nnrecipe.errors import UserError
from nnrecipe.run_index import compare, list_runs, to_clean


def cli(*args, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, input=input)


def fake_run(root: Path, name: str, accuracy: float | None, status: str = "finished", lr: float = 0.01, **meta):
    """A run directory as the image family writes one, without training: the index reads only files."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.safetensors").write_bytes(b"w" * 1000)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"task": "image_classification", "optim": {"lr": lr}}))
    info = {"status": status, "task": "image_classification", "recipe_name": "digits", "created": "2026-12-01T10:00:00"}
    (run / "run.json").write_text(json.dumps(info | meta))
    if accuracy is not None:
        (run / "report.json").write_text(json.dumps({"test": {"accuracy": accuracy, "examples": 100}}))
    history = [{"epoch": e, "train_loss": 1 / e, "val_accuracy": accuracy or 0.1} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, history)) + "\n{cut by a crash")
    return run


@pytest.fixture
def many(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "a", 0.90)
    fake_run(root, "b", 0.95, lr=0.1)
    fake_run(root / "study", "c", 0.80)  # one folder deeper, as tune's trials
    fake_run(root, "d", None, status="running")  # interrupted: needs its checkpoint to resume
    return root


def test_runs_lists_every_run_with_its_primary_metric(many, trained_digits_run):
    shutil.copytree(trained_digits_run.dir, many / "real")
    rows = {r.path.name: r for r in list_runs(many)}
    assert set(rows) == {"a", "b", "c", "d", "real"}
    assert (rows["b"].metric, rows["b"].value, rows["b"].split) == ("accuracy", 0.95, "test")
    assert rows["d"].value is None and rows["d"].status == "running"
    # A run made now records its metric in run.json, so listing it imports no family.
    assert json.loads((many / "real" / "run.json").read_text())["metric"] == {"name": "accuracy", "mode": "max"}
    assert rows["real"].value == trained_digits_run.report()["test"]["accuracy"] and rows["real"].checkpoint_bytes
    res = cli("runs", many, "--status", "finished")
    assert res.exit_code == 0 and "study/c" in res.output and "0.95" in res.output and " d " not in res.output
    lines = cli("runs", many, "--json").output.splitlines()
    assert len(lines) == 5 and {json.loads(line)["task"] for line in lines} == {"image_classification"}
    with pytest.raises(UserError, match="no runs folder: .*missing"):  # main() prints it as one line
        cli("runs", many / "missing")


def test_a_status_or_task_no_run_can_have_is_named_not_an_empty_table(many):
    with pytest.raises(UserError, match=r"--status: one of created, .*failed, damaged \(got 'done'\)"):
        list_runs(many, status="done")
    with pytest.raises(UserError, match=r"--task: one of image_classification, .* \(got 'image'\)"):
        list_runs(many, task="image")
    assert list_runs(many, task="detection") == [] and len(list_runs(many, status="failed")) == 0
    assert [r.path.name for r in list_runs(many, task="image_classification", status="running")] == ["d"]


def test_compare_shows_metrics_the_recipe_difference_and_overlaid_curves(many, tmp_path):
    out = tmp_path / "cmp.png"
    res = cli("compare", many / "a", many / "b", "--out", out)
    assert res.exit_code == 0, res.output
    assert "test.accuracy" in res.output and "0.95" in res.output and "optim.lr" in res.output
    assert out.stat().st_size > 5000  # train_loss and val_accuracy, one line per run
    # A folder was written as <folder>.png and reported as the folder; x.txt was a matplotlib traceback.
    for bad in (tmp_path, tmp_path / "cmp.txt"):
        with pytest.raises(UserError, match=f"--out {bad}: the curves are a PNG; give a file name ending in .png"):
            cli("compare", many / "a", many / "b", "--out", bad)
    assert not list(tmp_path.parent.glob("*.png")) and not (tmp_path / "cmp.txt").exists()
    # Long values are cut in their cell (a description stretched every column to its length).
    long = "a description that runs on well past the forty characters a cell shows"
    fake_run(many, "e", 0.5)
    for name, text in (("a", "short"), ("e", long)):
        recipe = yaml.safe_load((many / name / "recipe.yaml").read_text()) | {"description": text}
        (many / name / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = cli("compare", many / "a", many / "e", "--out", out)
    assert f"{long[:39]}…" in res.output and long not in res.output


def test_compare_refuses_runs_of_different_tasks(many, tmp_path):
    """An image run beside a text run listed every field of both families as a difference, and no metric."""
    other = fake_run(many, "text", 0.8)
    meta = json.loads((other / "run.json").read_text()) | {"task": "text_classification"}
    (other / "run.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"different tasks \(image_classification, text_classification\)"):
        cli("compare", many / "a", other, "--out", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_compare_refuses_a_run_given_twice_and_an_out_inside_a_compared_run(many):
    """--out runs/a/plots/curves.png replaced the run's own plot."""
    plot = many / "a" / "plots" / "curves.png"
    plot.parent.mkdir(exist_ok=True)
    plot.write_bytes(b"the run's own curves")
    with pytest.raises(UserError, match=r"--out .*curves.png: inside the compared run"):
        compare([many / "a", many / "b"], plot)
    with pytest.raises(UserError, match=r"compare: .*a is given twice"):
        compare([many / "a", many / "b" / ".." / "a"], many / "x.png")
    assert plot.read_bytes() == b"the run's own curves"


def test_clean_keeps_the_best_and_every_unfinished_run(many, tmp_path):
    chosen = [r.path.name for r in to_clean(list_runs(many), keep_best=1)]
    assert chosen == ["a", "c"]  # b is the best of recipe "digits"; d is running
    declined = cli("clean", many, "--keep-best", "1", input="n\n")  # asked, declined: nothing goes
    assert declined.exit_code == 1 and "nothing deleted" in declined.output
    assert (many / "a" / "checkpoints").is_dir()
    res = cli("clean", many, "--keep-best", "1", "--yes")
    assert res.exit_code == 0 and "freed" in res.output
    assert not (many / "a" / "checkpoints").exists() and not (many / "study" / "c" / "checkpoints").exists()
    assert (many / "b" / "checkpoints").is_dir() and (many / "d" / "checkpoints").is_dir()
    assert (many / "a" / "report.json").is_file()  # the record stays
    assert json.loads((many / "a" / "run.json").read_text())["cleaned"]
    assert cli("clean", many, "--keep-best", "1").output.strip() == "nothing to clean"


def test_clean_keeps_the_members_of_an_ensemble(many):
    """`train --seeds 0 1 2 --ensemble` then `clean --keep-best 1` removed two members' weights: the ensemble
    could no longer evaluate, predict or serve."""
    ensemble = many / "e"
    ensemble.mkdir()
    members = [str((many / "a").resolve()), str((many / "study" / "c").resolve())]
    meta = {"status": "finished", "task": "image_classification", "recipe_name": "ensemble"}
    (ensemble / "run.json").write_text(json.dumps(meta | {"ensemble": {"members": members, "weights": [0.5, 0.5]}}))
    assert [r.path.name for r in to_clean(list_runs(many), keep_best=1)] == ["a", "c"]  # without the ensemble in mind
    res = cli("clean", many, "--keep-best", "1", "--yes")
    assert res.exit_code == 0 and "nothing to clean" in res.output
    assert f"kept {many / 'a'}: ensemble {ensemble} averages it" in res.output
    assert (many / "a" / "checkpoints").is_dir() and (many / "study" / "c" / "checkpoints").is_dir()
    assert cli("clean", many, "--keep-best", "0", "--yes").exit_code == 0  # b is no member: it goes
    assert not (many / "b" / "checkpoints").exists() and (many / "a" / "checkpoints").is_dir()


def test_a_damaged_run_is_listed_as_such_and_named_by_every_verb_that_opens_it(many):
    """run.json, recipe.yaml or report.json damaged from outside (a disk, a hand edit): `runs` lists the run as
    damaged, or without its metric, and goes on; verbs that open it name the file in one line (they raised
    JSON and YAML tracebacks)."""
    (many / "a" / "run.json").write_text('{"status": "fini')
    (many / "b" / "recipe.yaml").write_text("optim: [unclosed")
    (many / "study" / "c" / "report.json").write_text("[1, 2")
    rows = {r.path.name: r for r in list_runs(many)}
    assert rows["a"].status == "damaged (run.json)" and rows["a"].value is None
    assert rows["b"].value == 0.95 and rows["c"].status == "finished" and rows["c"].value is None
    res = cli("runs", many)
    assert res.exit_code == 0 and "damaged" in res.output
    for args, damaged in (
        (("evaluate", many / "a"), r"a/run.json is damaged \(not JSON"),
        (("resume", many / "a"), r"a/run.json is damaged \(not JSON"),
        (("evaluate", many / "b"), r"b/recipe.yaml is damaged \(not YAML"),
        (("compare", many / "b", many / "d", "--out", many / "b.png"), r"b/recipe.yaml is damaged \(not YAML"),
        (("compare", many / "d", many / "a", "--out", many / "a.png"), r"a/run.json is damaged \(not JSON"),
    ):
        with pytest.raises(UserError, match=damaged):
            cli(*args)
    assert not list(many.glob("*.png"))  # a refused comparison draws nothing
    assert [r.path.name for r in to_clean(list_runs(many), keep_best=0)] == ["b"]  # never the damaged one


def test_a_run_finds_its_relative_data_and_map_files_from_any_folder(tmp_path, monkeypatch):
    """A recipe names its files relative to where it is started; the run keeps them absolute. `evaluate` on an
    imagefolder run started in another folder said "data.path: folder not found: tree", and `rl evaluate` on a
    gridmap run "env.map: map file not found: m.txt"."""
    from tests.conftest import write_digit_tree

    from nnrecipe.recipe import load_recipe
    from nnrecipe.runs import create_run, open_run
    from nnrecipe.tasks import get_family

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_digit_tree(work / "tree", [0, 1], per_class=12, size=8)
    (work / "m.txt").write_text("S.G\n")
    elsewhere.mkdir()
    (work / "image.yaml").write_text(yaml.safe_dump({
        "task": "image_classification", "data": {"source": "imagefolder", "path": "tree", "image_size": 8},
        "model": {"name": "convnet"}, "train": {"epochs": 1, "batch_size": 8},
        "track": {"runs_dir": "runs", "progress": False, "plots": False, "tensorboard": False}}))  # fmt: skip
    (work / "grid.yaml").write_text(yaml.safe_dump({
        "task": "rl", "env": {"id": "gridmap", "map": "m.txt"}, "algo": "qlearning", "tabular": {"episodes": 50},
        "track": {"runs_dir": "runs", "progress": False, "plots": False}}))  # fmt: skip
    monkeypatch.chdir(work)
    runs = []
    for name in ("image", "grid"):
        recipe = load_recipe(Path(f"{name}.yaml"))
        runs.append(create_run(recipe, name))
        get_family(recipe.task).train(recipe, runs[-1])
    saved = yaml.safe_load((runs[0].dir / "recipe.yaml").read_text())
    assert saved["data"]["path"] == str(work / "tree") and saved["track"]["runs_dir"] == "runs"
    monkeypatch.chdir(elsewhere)
    for run in runs:
        run = open_run(work / run.dir)
        assert get_family(run.recipe().task).evaluate(run)


def test_a_runs_time_is_until_it_ended_not_until_run_json_last_changed(many, tmp_path):
    """`calibrate` (or `clean`) rewriting run.json a day later made the run's time a day long; a run now
    stamps `ended`, and one without the stamp (running, or from before) still counts to run.json's time."""
    from nnrecipe.runs import Run

    run = Run(many / "a")
    run.update_meta(status="running")
    assert "ended" not in run.meta()
    run.update_meta(status="finished")
    ended = run.meta()["ended"]
    (many / "a" / "run.json").write_text(json.dumps(run.meta() | {"created": "2026-12-01T10:00:00",
                                                                    "ended": "2026-12-01T10:02:30"}))  # fmt: skip
    run.update_meta(temperature=1.5)  # calibrated later: not an end
    rows = {r.path.name: r for r in list_runs(many)}
    assert rows["a"].seconds == 150 and ended
    assert rows["d"].seconds > 150  # "running" since 2026-12-01, no end: to run.json's time
    assert "1 run under" in cli("runs", many / "a").output
