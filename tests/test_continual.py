"""Continual learning on digits: head growth keeps the old classes' logits, replay forgets less than
naive fine-tuning (measured), EWC with lambda 0 is fine-tuning, and stages report the accuracy matrix."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.conftest import make_recipe, write_digit_tree

from nnrecipe.continual import train_stages
from nnrecipe.data import images
from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.checkpoint import load_checkpoint, load_weights
from nnrecipe.engine.loop import make_accelerator
from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import validate_recipe
from nnrecipe.reporting.continual import continual_metrics
from nnrecipe.run_index import list_runs, to_clean
from nnrecipe.runs import open_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.image_inputs import input_pipeline

image = get_family("image_classification")
LOW, HIGH = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]


def staged(runs, strategy, name, *extra):
    """Digits 0-4, then 5-9 (class-incremental), 5 epochs each."""
    recipe = make_recipe(
        runs, "train.epochs=5", f"continual.strategy={strategy}", f"track.name={name}", *extra,
        continual={"stages": [LOW, HIGH]},
    )  # fmt: skip
    return train_stages(image, recipe, image.continual_stages(recipe), name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("continual") / "runs"


@pytest.fixture(scope="module")
def naive(runs):
    return staged(runs, "finetune", "naive")


def test_metrics_follow_their_definitions():
    r = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.7, 0.9]]
    m = continual_metrics(r)
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m["average_forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert m["backward_transfer"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_a_grown_head_keeps_the_old_classes_logits(recipe_factory, new_run):
    old = recipe_factory("train.epochs=2", continual={}, data={"classes": LOW})
    old_run = new_run(old, "old")
    image.train(old, old_run)
    new = recipe_factory("train.epochs=2", data={"classes": HIGH})
    image.continue_from(new, old_run.dir)
    splits = image.splits(new)
    assert splits.classes == LOW + HIGH and set(splits.train.labels.tolist()) == set(range(5, 10))
    setup = image.setup(new, splits, make_accelerator(new.train), new_run(new, "new"))
    before = image.trained(old_run).model
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        # Equal up to float rounding: a 10-wide head's matmul may sum in another order than a 5-wide one's
        # (on an AMD EPYC, 13 of 80 logits differed by 9e-8; on an Intel Xeon none did).
        torch.testing.assert_close(setup.model.eval()(x)[:, :5], before(x), rtol=1e-5, atol=1e-6)
        assert setup.model(x).shape == (16, 10)
    # EWC from a run that kept no Fisher information: computed from that run's own training images.
    new.continual.strategy = "ewc"
    task = image.setup(new, splits, make_accelerator(new.train), new_run(new, "ewc")).task
    fisher = image.fisher_of(old_run)
    for name, f in fisher.items():
        torch.testing.assert_close(task.fisher[name][: len(f)], f)
        assert not task.fisher[name][len(f) :].any()  # the new classes' rows: nothing to hold yet
    assert any(bool(f.any()) for f in fisher.values())


def test_replay_forgets_less_than_naive_fine_tuning(runs, naive):
    replay = staged(runs, "replay", "replay", "continual.memory=200")
    # Fine-tuning on 5-9 alone forgets 0-4 almost entirely; a 200-image memory keeps much of it.
    # Measured: fine-tuning on 5-9 alone forgets 0-4 entirely (0.98 -> 0.00); the 200-image memory keeps
    # 0.89 of them (forgetting 0.09).
    assert naive["accuracy_matrix"][0][0] > 0.9 and naive["accuracy_matrix"][1][0] < 0.2
    assert replay["average_forgetting"] < naive["average_forgetting"] - 0.5
    assert replay["average_accuracy"] > naive["average_accuracy"] + 0.3
    tensors, state = load_checkpoint(f"{replay['runs'][0]}/memory.safetensors")
    assert state["classes"] == LOW and tensors["images"].shape[0] == 200
    assert torch.bincount(tensors["labels"]).tolist() == [40] * 5
    report = json.loads((runs / "replay-continual" / "report.json").read_text())
    assert report["accuracy_matrix"] == replay["accuracy_matrix"] and report["strategy"] == "replay"
    assert (runs / "replay-continual" / "accuracy_matrix.png").is_file()
    assert "| 2: 5,6,7,8,9 (`replay-stage2`) |" in (runs / "replay-continual" / "report.md").read_text()
    # Each stage is its own recipe for `clean`: the stages of one sequence were one, and keeping the best
    # stage's weights (stage 1's, on its easier half) freed the final model's.
    stages = [r for r in list_runs(runs) if r.path.name.startswith(("naive-stage", "replay-stage"))]
    assert len(stages) == 4 and to_clean(stages, keep_best=1) == []


def test_a_memory_batch_in_every_step_is_drawn_reproducibly():
    """continual.replay_batch's loader: k memory examples after every batch of new data, the same ones when
    an epoch is resumed part-way (drawn from seed, epoch and batch)."""
    x, y = torch.arange(100).view(100, 1), torch.zeros(100, dtype=torch.long)
    mx, my = torch.arange(1000, 1010).view(10, 1), torch.ones(10, dtype=torch.long)
    loader = TensorLoader(x, y, 16, shuffle=True, seed=3, rehearsal=(mx, my, 4))
    full = list(loader.batches(epoch=2))
    assert len(full) == len(loader) == 7
    for xb, yb in full:
        assert yb[-4:].tolist() == [1] * 4 and int(yb[:-4].sum()) == 0 and bool((xb[-4:] >= 1000).all())
    resumed = list(loader.batches(epoch=2, start=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], resumed, strict=True))
    other = list(loader.batches(epoch=3))
    assert any(not torch.equal(a[0][-4:], b[0][-4:]) for a, b in zip(full, other, strict=True))


def test_replay_drawn_into_every_batch_forgets_less_than_naive(runs, naive, capsys):
    replay = staged(runs, "replay", "replay-batched", "continual.memory=200", "continual.replay_batch=32")
    # Measured: 0-4 kept at 0.83 after 5-9 (forgetting 0.15; fine-tuning's 0.98).
    assert replay["average_forgetting"] < naive["average_forgetting"] - 0.5
    assert "with 200 replayed examples, 32 in every batch" in capsys.readouterr().err


def test_ewc_with_lambda_zero_is_fine_tuning(runs, naive):
    ewc0 = staged(runs, "ewc", "ewc0", "continual.ewc_lambda=0")
    a, b = (load_weights(f"{r['runs'][1]}/checkpoints/best.safetensors") for r in (naive, ewc0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fisher, _ = load_checkpoint(f"{ewc0['runs'][0]}/fisher.safetensors")
    assert all(bool((t >= 0).all()) for t in fisher.values()) and any(bool((t > 0).any()) for t in fisher.values())


def test_ewc_holds_important_weights_and_lwf_holds_old_outputs(runs, naive):
    """In this class-incremental split EWC and LwF forget as much as fine-tuning (the known result: the new
    classes' head rows win every old image, van de Ven et al. 2019); what each does is still measurable.
    EWC: the Fisher-weighted distance from the stage-1 weights is smaller; LwF: the old classes' logits on
    stage-1 test images stay closer to the stage-1 model's."""
    ewc = staged(runs, "ewc", "ewc", "continual.ewc_lambda=10000")
    lwf = staged(runs, "lwf", "lwf", "continual.lwf_alpha=1")
    fisher, _ = load_checkpoint(f"{ewc['runs'][0]}/fisher.safetensors")
    start = load_weights(f"{ewc['runs'][0]}/checkpoints/best.safetensors")

    def moved(result):
        end = load_weights(f"{result['runs'][1]}/checkpoints/best.safetensors")
        return sum(float((f * (end[k.removeprefix("fisher.")][: len(f)] - start[k.removeprefix("fisher.")]) ** 2).sum())
                   for k, f in fisher.items())  # fmt: skip

    assert moved(ewc) < 0.5 * moved(naive)

    recipe = make_recipe(runs, data={"classes": LOW})
    x = image.splits(recipe).test.images
    stage1 = image.trained(open_run(runs / "naive-stage1")).model

    def drift(result):
        inf = image.trained(open_run(result["runs"][1]))
        after, pipeline = inf.model, input_pipeline(recipe, inf.spec, augment=False)
        with torch.no_grad():
            xs = pipeline(x, 0)
            return float((after(xs)[:, :5].softmax(1) - stage1(xs).softmax(1)).abs().mean())

    assert drift(lwf) < 0.5 * drift(naive)


def test_bad_continual_input_is_named(recipe_factory, trained_digits_run):
    with pytest.raises(UserError, match="data.classes: 11 not in the data"):
        image.splits(recipe_factory(data={"classes": ["1", "11"]}))
    with pytest.raises(RecipeError, match="continual.strategy"):
        recipe_factory("continual.strategy=magic")
    with pytest.raises(RecipeError, match="^recipe error: continual.replay_batch needs continual.strategy: replay"):
        recipe_factory("continual.strategy=ewc", "continual.replay_batch=8")
    # an empty stage was pydantic's traceback; a class in two stages, or replay without a memory, trained silently
    for fields, message in (
        ({"stages": [["0", "1"], []]}, "continual.stages: stage 2 has no classes"),
        ({"stages": [["0", "1"], ["1", "2"]]}, "continual.stages: '1' is in stage 1 and stage 2"),
        ({"strategy": "replay", "memory": 0}, "continual.memory: 0 keeps nothing to replay"),
    ):
        with pytest.raises(RecipeError, match=rf"^recipe error: {re.escape(message)}"):
            recipe_factory(continual=fields)
    with pytest.raises(RecipeError, match=r"continual.stages: 'World' is in stage 1 and stage 3"):  # text too
        validate_recipe({"task": "text_classification", "continual": {"stages": [["World"], ["Sports"], ["World"]]}})
    with pytest.raises(
        UserError,
        match=r"no continual learning for .* runs \(offered for image_classification, text_classification, token_classification",
    ):
        get_family("detection").continue_from(None, trained_digits_run.dir)
    other = recipe_factory("data.image_size=16")
    image.continue_from(other, trained_digits_run.dir)
    with pytest.raises(UserError, match="continual.from_run: that run's model reads 1x8x8 images"):
        image.setup(other, image.splits(other), make_accelerator(other.train), None)


def test_the_bundled_stages_recipe_runs_from_the_command_line(tmp_path):
    """recipes/digits-continual.yaml through the real CLI, cut to two stages of one epoch (what it learns is
    measured above): the stage runs, each continuing the last, and the accuracy matrix."""
    from tests.test_cli import ROOT, nnrecipe

    res = nnrecipe(
        "train", ROOT / "recipes/digits-continual.yaml", "--set", f"track.runs_dir={tmp_path / 'runs'}",
        "--set", "track.name=two", "--set", "train.epochs=1", "--set", 'continual.stages=[["0","1"],["2","3"]]',
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "runs" / "two-continual" / "report.json").read_text())
    r = report["accuracy_matrix"]
    assert len(r) == 2 and r[0][1] == 0.0 and report["strategy"] == "replay"  # classes not seen yet: never predicted
    second = open_run(tmp_path / "runs" / "two-stage2")
    assert second.meta()["continues"] == str((tmp_path / "runs" / "two-stage1").resolve())
    assert second.meta()["spec"]["classes"] == ["0", "1", "2", "3"]
    res = nnrecipe("train", ROOT / "recipes/digits-continual.yaml", "--seeds", "0", "1", cwd=tmp_path)
    assert res.returncode == 1 and "no --seeds or --continue-from with them" in res.stderr


def test_stages_on_an_image_folder_read_it_once_and_each_stage_holdout_once(tmp_path, monkeypatch):
    tree = write_digit_tree(tmp_path / "tree", [0, 1, 2, 3], per_class=20)
    recipe = make_recipe(
        tmp_path / "runs", "data.source=imagefolder", f"data.path={tree}", "train.epochs=1", "track.name=folder",
        continual={"stages": [["0", "1"], ["2", "3"]]},
    )  # fmt: skip
    reads, holdouts = [], []
    read_source, holdout = images.read_source, image.continual_holdout
    monkeypatch.setattr(images, "read_source", lambda data: reads.append(1) or read_source(data))
    monkeypatch.setattr(type(image), "continual_holdout", lambda self, r: holdouts.append(1) or holdout(r))
    result = train_stages(image, recipe, image.continual_stages(recipe), "folder")
    # one decoding of the tree for both stages' training and scoring (class sets differ, the source does
    # not), and 2 holdouts for the 2 x 2 scores (it was 6 reads and 4 holdouts)
    assert len(reads) == 1 and len(holdouts) == 2
    assert len(result["accuracy_matrix"]) == 2 and all(0 <= v <= 1 for row in result["accuracy_matrix"] for v in row)
    assert result["accuracy_matrix"][0][1] == 0.0  # stage 2's classes are not in stage 1's head: never right


def test_stages_without_held_out_images_are_refused_by_name(tmp_path):
    recipe = make_recipe(
        tmp_path / "runs", "train.epochs=1", "data.val_fraction=0", "data.test_fraction=0", "track.name=nohold",
        continual={"stages": [LOW, HIGH]},
    )  # fmt: skip
    with pytest.raises(UserError, match="each stage needs validation or test images"):
        train_stages(image, recipe, image.continual_stages(recipe), "nohold")
