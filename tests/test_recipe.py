"""Recipe validation: defaults that work, and one readable line for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from nnrecipe.errors import RecipeError
from nnrecipe.recipe import apply_override, load_recipe, validate_recipe
from nnrecipe.tasks.image_recipe import ImageRecipe as Recipe

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_a_valid_recipe():
    r = Recipe()
    assert r.data.source == "digits" and r.model.name == "convnet" and r.optim.lr > 0


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_recipes_validate_and_describe_themselves(path):
    r = load_recipe(path)
    assert r.description, f"{path.name} needs a one-line description for `nnrecipe recipes`"


def test_override_types_follow_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {source: digits}\n")
    r = load_recipe(p, ["optim.lr=0.2", "train.epochs=3", "data.augment.scale=[0.5, 1.0]", "train.clip_grad_norm=1"])
    assert r.optim.lr == 0.2 and r.train.epochs == 3 and r.data.augment.scale == (0.5, 1.0)
    assert r.train.clip_grad_norm == 1.0


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"optim": {"lrr": 0.1}}, ["optim.lrr", "did you mean 'optim.lr'", "allowed: name, lr"]),
        ({"optim": {"lr": -1}}, ["optim.lr", "greater than 0", "-1"]),
        ({"train": {"batch_size": 0}}, ["train.batch_size", "greater than 0"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "integer"]),
        ({"data": {"source": "mnist"}}, ["data.source", "'digits', 'cifar10', 'imagefolder' or 'shards'", "mnist"]),
        ({"model": {"name": "resnet5"}}, ["model.name", "allowed: convnet", "resnet18"]),
        ({"model": {"name": "tv:resnet_999"}}, ["model.name", "unknown torchvision model"]),
        ({"schedule": {"name": "poly"}}, ["schedule.name", "'constant', 'step', 'linear', 'cosine' or 'onecycle'"]),
        ({"model": {"unfreeze_at_epoch": 2}}, ["unfreeze_at_epoch needs model.freeze"]),
        ({"dta": {}}, ["unknown field 'dta'", "did you mean 'data'"]),
        ({"data": {"workers": -1}}, ["data.workers: must be auto or a number of DataLoader processes, 0 or more"]),
        ({"data": {"workers": "many"}}, ["data.workers: must be auto or a number", "'many'"]),  # was two lines
    ],
)
def test_mistakes_are_one_readable_line(raw, expected):
    with pytest.raises(RecipeError) as e:
        validate_recipe(raw)
    msg = str(e.value)
    assert msg.count("\n") == 0, msg
    for part in expected:
        assert part in msg, msg


def test_bad_override_syntax_is_explained(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("{}\n")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(p, ["optim.lr"])
    with pytest.raises(RecipeError, match="optim.lr is a value"):
        load_recipe(p, ["optim.lr=0.1", "optim.lr.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_a_key_given_twice_is_refused_and_merge_keys_still_override(tmp_path):
    """PyYAML kept the last of two equal keys: a second `train:` section silently replaced the first."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\nmodel: {name: mlp}\ntrain:\n  batch_size: 8\n")
    with pytest.raises(RecipeError, match=r"twice.yaml: 'train' given twice in one mapping \(lines 1 and 4\)"):
        load_recipe(twice)
    merged = tmp_path / "merged.yaml"  # `<<: *base` then a key of its own: an override, as YAML means it
    merged.write_text("model: {name: mlp}\ntrain: {<<: {epochs: 9, batch_size: 8}, epochs: 2}\n")
    r = load_recipe(merged)
    assert r.train.epochs == 2 and r.train.batch_size == 8


def test_cli_reports_recipe_errors_without_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "nnrecipe.cli",
        "train",
        str(ROOT / "recipes/digits-convnet.yaml"),
        "--set",
        "optim.lr=-1",
        "--set",
        f"track.runs_dir={tmp_path}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "recipe error: optim.lr" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not any(tmp_path.iterdir()), "an invalid recipe must not create a run directory"


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"train": {"seed": 2**64}}, "train.seed"),  # torch's overflow traceback at the first generator
        ({"train": {"seed": -1}}, "train.seed"),
        ({"data": {"split_seed": 2**32}}, "data.split_seed"),
        ({"task": "rl", "seed": -3}, "seed"),  # gymnasium refused it at the first reset
        ({"task": "rl", "eval": {"seed": 2**40}}, "eval.seed"),
        ({"task": "language_modeling", "data": {"train": "t.txt"}, "sample": {"seed": -2}}, "sample.seed"),
    ],
)
def test_seeds_are_what_numpy_takes_in_every_family(raw, field):
    with pytest.raises(RecipeError, match=rf"recipe error: {field}: Input should be (greater|less) than or equal to"):
        validate_recipe(raw)


@pytest.mark.parametrize("value", ["inf", "nan", "1e400"])
def test_no_number_in_a_recipe_may_be_infinite_or_nan(value):
    """optim.lr=inf passed `gt=0`, and the run diverged on its first batch."""
    for raw, field in (({}, "optim.lr"), ({"task": "rl", "algo": "dqn"}, "dqn.lr"), ({}, "train.clip_grad_norm")):
        with pytest.raises(RecipeError, match=rf"recipe error: {field}: Input should be a finite number"):
            apply_override(raw, f"{field}={value}")
            validate_recipe(raw)


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"train": {"epochs": "yes"}}, "train.epochs"),  # YAML's yes is true: it trained one epoch
        ({"optim": {"lr": "true"}}, "optim.lr"),  # lr 1.0
        ({"train": {"clip_grad_norm": "false"}}, "train.clip_grad_norm"),  # 0.0, not "off" (that is null)
        ({"task": "rl", "seed": "true"}, "seed"),
        ({"task": "rl", "algo": "dqn", "dqn": {"batch_size": "on"}}, "dqn.batch_size"),
    ],
)
def test_true_or_false_is_not_a_number(raw, field):
    import yaml

    raw = yaml.safe_load(yaml.safe_dump(raw).replace("'", ""))  # the words unquoted, as a recipe has them
    with pytest.raises(RecipeError, match=rf"recipe error: {field}: a number, not true or false"):
        validate_recipe(raw)
    recipe = validate_recipe({"data": {"stream": True}, "track": {"tensorboard": False}})  # fields that take them
    assert recipe.data.stream is True and recipe.track.tensorboard is False


def test_a_run_name_is_one_folder_and_runs_dir_a_folder_it_can_make(tmp_path):
    """track.name=../../x wrote the run outside runs_dir; a runs_dir on a file was NotADirectoryError."""
    from nnrecipe.errors import UserError
    from nnrecipe.runs import create_run

    for name in ("../../escape", "a/b", ".."):
        with pytest.raises(RecipeError, match="track.name: one folder name, without / or .."):
            validate_recipe({"track": {"name": name}})
    # The options that name a run or a study: train --name was pydantic's traceback, tune --study wrote there.
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    for args in (["train", "digits-convnet", "--name", "../x"], ["tune", "digits-convnet", "--study", "../x",
                                                                   "--param", "optim.lr=loguniform(1e-3,0.3)"]):  # fmt: skip
        with pytest.raises(RecipeError, match=rf"{args[2]}: one folder name, without / or .. \(got '\.\./x'\)"):
            CliRunner().invoke(app, args, catch_exceptions=False)
    (tmp_path / "file").write_text("")
    recipe = validate_recipe({"track": {"runs_dir": str(tmp_path / "file")}})
    with pytest.raises(UserError, match=r"track.runs_dir .*file: cannot make the run folder .*\(Not a directory\)"):
        create_run(recipe, "x")


def test_every_field_is_documented_and_docs_are_current():
    from nnrecipe.recipe import reference_markdown

    text = reference_markdown()
    assert "|  |" not in text.replace("| `description` | str | `` |", ""), "a field lacks a description"
    assert (ROOT / "docs" / "recipe.md").read_text() == text, "regenerate: nnrecipe fields > docs/recipe.md"


def test_the_reference_shows_each_familys_own_defaults():
    """Regression: docs/recipe.md listed the image defaults (sgd, lr 0.05) for the transformer families."""
    from nnrecipe.recipe import reference_markdown

    text = reference_markdown().split("## `task: text_classification`")[1].split("## `task:")[0]
    assert "| `optim.name` | sgd / adam / adamw | `adamw` |" in text and "| `optim.lr` | float | `5e-05` |" in text


def test_running_out_of_memory_is_one_line_and_other_errors_are_not_hidden(monkeypatch, capsys):
    """torch's allocator failing (data.image_size=100000 asked for 12.9 TB) printed a traceback."""
    from nnrecipe import cli

    def out_of_memory():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 12 TB")

    monkeypatch.setattr(cli, "app", out_of_memory)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1 and "error: out of memory (" in capsys.readouterr().err

    def bug():
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug keeps its traceback
        cli.main()


def test_a_stop_inside_a_command_outside_training_says_aborted_and_exits_130(monkeypatch, capsys, tmp_path):
    """typer turned the KeyboardInterrupt into exit 130 without a word (a Ctrl-C while data loads, say)."""
    import nnrecipe.run_index
    from nnrecipe import cli

    def stopped(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(nnrecipe.run_index, "list_runs", stopped)
    monkeypatch.setattr(sys, "argv", ["nnrecipe", "runs", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "aborted"

    def saved_and_stopped(*args, **kw):  # as a training loop that took the stop, saved and said so
        raise typer.Exit(130)

    monkeypatch.setattr(nnrecipe.run_index, "list_runs", saved_and_stopped)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130 and capsys.readouterr().err == ""


def test_a_path_the_disk_refuses_is_one_line_and_other_os_errors_keep_their_traceback(monkeypatch, capsys, tmp_path):
    """`compare --out /proc/x.png` or a disk that is full ended in an OSError traceback."""
    from nnrecipe import cli

    in_the_way = tmp_path / "run.json"
    in_the_way.write_text("{}")

    def refused():
        (in_the_way / "plots").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(cli, "app", refused)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert (
        e.value.code == 1
        and capsys.readouterr().err.strip() == f"error: {in_the_way}: a file, where a folder is needed"
    )

    def disk_full():
        raise OSError(28, "No space left on device", str(tmp_path / "ckpt.safetensors"))

    monkeypatch.setattr(cli, "app", disk_full)
    with pytest.raises(SystemExit):
        cli.main()
    assert "ckpt.safetensors: No space left on device" in capsys.readouterr().err

    def bug():
        raise OSError("a socket closed")  # no file named: a bug keeps its traceback

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(OSError, match="socket"):
        cli.main()


def test_a_value_no_member_of_a_union_takes_is_one_line_at_the_field():
    """`data.stream: maybe` was two lines at made-up paths: data.stream.literal['auto'] and data.stream.bool."""
    for task in ("image_classification", "text_classification", "token_classification"):
        with pytest.raises(RecipeError) as e:
            validate_recipe({"task": task, "data": {"stream": "maybe"}})
        assert str(e.value) == "recipe error: data.stream: 'auto' or true or false (got 'maybe')"


def test_a_runs_recipe_keeps_paths_absolute_with_the_home_folder_expanded(tmp_path, monkeypatch):
    """The run's copy of the recipe names its files absolutely; `~/tree` is the home folder's, as the data
    loaders read it (made absolute as it stood, it became <current folder>/~/tree)."""
    from nnrecipe.engine.config import with_absolute_paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    recipe = validate_recipe({"data": {"source": "imagefolder", "path": "~/tree"}, "model": {"init_from": "w.pt"},
                              "track": {"runs_dir": "runs"}})  # fmt: skip
    kept = with_absolute_paths(recipe)
    assert kept.data.path == tmp_path / "home" / "tree" and kept.model.init_from == tmp_path / "w.pt"
    assert kept.track.runs_dir == Path("runs") and recipe.data.path == Path("~/tree")  # the recipe itself unchanged


def test_class_names_written_as_numbers_are_names_and_each_is_listed_once():
    """`classes: [0, 1]` (folders 0/ and 1/, as YAML reads them) was "not a valid string"; a class listed
    twice was accepted."""
    image = validate_recipe({"data": {"source": "imagefolder", "path": "x", "classes": [0, 1]},
                             "continual": {"stages": [[0, 1], [2, "3"]]}})  # fmt: skip
    assert image.data.classes == ["0", "1"] and image.continual.stages == [["0", "1"], ["2", "3"]]
    text = validate_recipe({"task": "text_classification", "data": {"classes": [1, 0]}})
    assert text.data.classes == ["1", "0"]
    for raw in ({"data": {"classes": [0, 0, 1]}}, {"task": "detection", "data": {"classes": ["a", "b", "a"]}}):
        with pytest.raises(RecipeError, match=r"data.classes: listed more than once: (0|a) \(got"):
            validate_recipe(raw)
