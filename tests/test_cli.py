"""The real CLI in a subprocess, with tiny budgets: every bundled recipe starts, every verb works. Where the
verb and not the process is the subject, a call runs in this process (tests.conftest.in_process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import in_process, write_digit_tree

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def nnrecipe(*args, cwd, timeout=240):
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "nnrecipe.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


@pytest.mark.parametrize("recipe", ["digits-convnet", "digits-lenet5", "digits-resnet18"])
def test_digits_recipes_train_evaluate_predict(recipe, tmp_path):
    res = nnrecipe(
        "train",
        ROOT / "recipes" / f"{recipe}.yaml",
        "--set",
        "train.epochs=1",
        "--set",
        "data.limit=200",
        "--set",
        f"track.runs_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    run = only_run(tmp_path / "runs")
    assert "test accuracy" in res.stderr and "report:" in res.stderr
    for name in (
        "recipe.yaml",
        "metrics.jsonl",
        "report.json",
        "report.md",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
        "plots/curves.png",
        "plots/confusion_test.png",
    ):
        assert (run / name).is_file(), name
    if recipe != "digits-convnet":
        return
    res = nnrecipe("evaluate", run, "--split", "val", cwd=tmp_path)
    assert res.returncode == 0 and "val accuracy" in res.stderr
    assert "val" in json.loads((run / "report.json").read_text())
    tree = write_digit_tree(tmp_path / "imgs", [1, 7], per_class=2)
    res = nnrecipe("predict", run, *sorted(tree.rglob("*.png")), "--json", cwd=tmp_path)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0 and len(rows) == 4 and all(r["label"] in "0123456789" for r in rows)
    res = nnrecipe("resume", run, cwd=tmp_path)
    assert res.returncode == 1 and "already finished" in res.stderr


def test_imagefolder_finetune_recipe_runs_on_a_generated_tree(tmp_path):
    tree = write_digit_tree(tmp_path / "imgs", [0, 1, 2], per_class=20)
    res = nnrecipe(
        "train",
        ROOT / "recipes/imagefolder-finetune.yaml",
        "--set",
        f"data.path={tree}",
        "--set",
        "model.name=convnet",
        "--set",
        "train.epochs=1",
        "--set",
        "model.unfreeze_at_epoch=0",
        "--set",
        f"track.runs_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("recipe", ["cifar10-convnet", "cifar10-resnet18"])
def test_cifar_recipes_explain_where_the_files_go_when_offline(recipe, tmp_path):
    res = nnrecipe(
        "train",
        ROOT / "recipes" / f"{recipe}.yaml",
        "--set",
        f"data.path={tmp_path / 'cifar'}",
        "--set",
        "data.download=false",
        "--set",
        f"track.runs_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert f"{tmp_path / 'cifar'}/cifar-10-batches-py" in res.stderr and "cifar-10-python.tar.gz" in res.stderr


def test_recipes_lists_each_bundled_recipe(tmp_path):
    res = nnrecipe("recipes", cwd=tmp_path)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(list((ROOT / "recipes").glob("*.yaml")))
    assert any(line.startswith("digits-convnet ") for line in lines)  # a name `nnrecipe train` takes


def test_help_lists_each_command_with_its_summary_as_one_paragraph():
    """typer's rich mode kept the docstrings' source line breaks in `--help`'s command list."""
    import typer

    from nnrecipe import cli

    groups = [typer.main.get_command(cli.app)]
    commands = []
    while groups:
        group = groups.pop()
        for command in group.commands.values():
            (groups if hasattr(command, "commands") else commands).append(command)
    assert {"train", "serve", "tune"} <= {c.name for c in commands}
    for command in commands:
        assert command.short_help and "\n" not in command.short_help, command.name
        assert command.help.startswith(command.short_help.split()[0]), command.name
        for param in command.params:  # a default shown as a line break broke the table (generate's prompt)
            assert not (param.show_default is not False and "\n" in str(param.default)), (command.name, param.name)


def test_user_errors_are_one_line_without_traceback(tmp_path):
    res = nnrecipe("evaluate", tmp_path / "no-such-run", cwd=tmp_path)
    assert res.returncode == 1 and "is not a run directory" in res.stderr
    res = nnrecipe("train", tmp_path / "missing.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "recipe file not found" in res.stderr
    res = nnrecipe("train", "digits-convnt", cwd=tmp_path)  # a bundled name, mistyped: the closest are offered
    assert res.returncode == 2 and "recipe file not found: digits-convnt (did you mean digits-convnet" in res.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    import signal

    cmd = [
        sys.executable,
        "-m",
        "nnrecipe.cli",
        "train",
        ROOT / "recipes/digits-convnet.yaml",
        "--set",
        "train.epochs=20",
        "--set",
        f"track.runs_dir={tmp_path / 'runs'}",
        "--set",
        "track.plots=false",
    ]
    proc = subprocess.Popen(
        list(map(str, cmd)),
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted: checkpoint saved" in rest and "Traceback" not in rest
    run = only_run(tmp_path / "runs")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    res = nnrecipe("resume", run, cwd=tmp_path)  # (it shortened the run by editing train.epochs: now refused)
    assert res.returncode == 0, res.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 21))


def test_doctor_writes_its_report_and_exits_1_when_a_check_fails(tmp_path):
    res = nnrecipe("doctor", ROOT / "recipes/digits-convnet.yaml", "--out", tmp_path / "ok", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ok" / "report.md").is_file() and "fail" not in res.stderr
    # The exit code of a failed check, in this process (the report above came from a real one)
    code, output = in_process(
        "doctor", ROOT / "recipes/digits-convnet.yaml", "--set", "optim.lr=5", "--out", tmp_path / "bad"
    )
    assert code == 1 and "fail  5. Overfit one batch" in output, output


@pytest.mark.parametrize(
    "recipe, path",
    [
        ("sst2-minilm", "data/sst2/train.tsv"),
        ("sst2-minilm-lora", "data/sst2/train.tsv"),
        ("conll2003-minilm", "data/conll2003/train.txt"),
    ],
)
def test_text_recipes_name_the_missing_data_file(recipe, path, tmp_path):
    res = nnrecipe(
        "train", ROOT / "recipes" / f"{recipe}.yaml", "--set", f"track.runs_dir={tmp_path / 'runs'}", cwd=tmp_path
    )
    assert res.returncode == 1 and f"data.train: file not found: {path}" in res.stderr and "Traceback" not in res.stderr
    # A failed start leaves no empty run directory for `runs` or a newest-run look-up to trip over.
    assert not any((tmp_path / "runs").glob("*")), list((tmp_path / "runs").glob("*"))
    assert "removed: nothing was trained" in res.stderr  # it named the folder, then left it unmentioned


def test_ner_predict_and_merge_from_the_command_line(trained_ner_run, tmp_path):
    """In this process (the digits recipes above run `predict` in a real one): each call loaded MiniLM anew."""
    code, output = in_process("predict", trained_ner_run.dir, "Yesterday, Li Wei reached Nairobi again.")
    assert code == 0 and "[Li Wei]PER@11-17" in output and "[Nairobi]LOC@26-33" in output, output
    code, output = in_process("merge", trained_ner_run.dir, "--out", tmp_path / "merged")
    assert code == 0 and (tmp_path / "merged" / "config.json").is_file(), output
    code, output = in_process("merge", trained_ner_run.dir, "--out", tmp_path / "merged")  # its own: replaced
    assert code == 0, output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, output = in_process("merge", trained_ner_run.dir, "--out", tmp_path / "mine")  # it was rmtree'd
    assert code == 1 and "is not a folder an earlier merge wrote" in output, output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_predict_out_never_replaces_an_input_or_a_file_of_the_run(tmp_path, trained_digits_run):
    """`predict --file a.txt --out a.txt` replaced the texts with their predictions, and `--out
    runs/<run>/run.json` the run's record."""
    from PIL import Image
    from typer.testing import CliRunner

    from nnrecipe.cli import app
    from nnrecipe.errors import UserError

    image = tmp_path / "seven.png"
    Image.new("L", (8, 8), 200).save(image)
    meta = trained_digits_run.meta_path.read_bytes()

    def predict(out: Path):
        args = ["predict", str(trained_digits_run.dir), str(image), "--out", str(out)]
        return CliRunner().invoke(app, args, catch_exceptions=False)

    with pytest.raises(UserError, match="seven.png: one of the inputs; nothing written"):
        predict(image)
    with pytest.raises(UserError, match="run.json: a file of the run"):
        predict(trained_digits_run.meta_path)
    assert trained_digits_run.meta_path.read_bytes() == meta and Image.open(image).size == (8, 8)
    assert predict(tmp_path / "p.jsonl").exit_code == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["label"] in [str(i) for i in range(10)]
    # a folder that does not exist yet is made (the predictions were made, then lost to FileNotFoundError)
    assert predict(tmp_path / "new" / "folder" / "p.jsonl").exit_code == 0
    assert json.loads((tmp_path / "new" / "folder" / "p.jsonl").read_text())["label"] in [str(i) for i in range(10)]
    assert [p.name for p in (tmp_path / "new" / "folder").iterdir()] == ["p.jsonl"]  # no staging file left
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(
        UserError, match="a-file/p.jsonl: cannot write there \\(.*a-file is a file\\); nothing predicted"
    ):
        predict(tmp_path / "a-file" / "p.jsonl")
