"""Exact resume: 4 epochs straight == 2 epochs, interrupt, resume 2 (loss history and final weights)."""

from __future__ import annotations

import pytest
import torch

from nnrecipe.engine.checkpoint import load_checkpoint
from nnrecipe.engine.loop import Callback
from nnrecipe.engine.tracking import read_metrics
from nnrecipe.tasks import get_family

task = get_family("image_classification")

TIMING = ("samples_per_s", "epoch_seconds")


class InterruptAt(Callback):
    """Acts like Ctrl-C arriving during batch `batch` of epoch `epoch` (0-based)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch, self.seen = epoch, batch, -1

    def on_epoch_start(self, epoch, model):
        self.seen = -1

    def after_step(self, trainer):
        self.seen += 1
        if trainer.state.epoch == self.epoch and self.seen == self.batch:
            trainer.stop_requested = True


def _history(run):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run.dir / "metrics.jsonl")]


def _weights(path):
    tensors, _ = load_checkpoint(path)
    return tensors


def assert_resumes_exactly(family, recipe, straight, batch: int) -> None:
    """A run of `recipe` interrupted during batch `batch` of epoch 1 and resumed equals `straight`, the same
    recipe's uninterrupted run: its history and its final weights."""
    from nnrecipe.runs import create_run

    broken = create_run(recipe, "broken")
    assert family.train(recipe, broken, callbacks=[InterruptAt(epoch=1, batch=batch)])["status"] == "interrupted"
    assert family.train(broken.recipe(), broken, resume=True)["status"] == "finished"
    assert _history(broken) == _history(straight)
    a, b = _weights(straight.last_checkpoint), _weights(broken.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


# Dropout, crop+flip+rotation augmentation, EMA, a one-cycle schedule and accumulation: every piece of
# state a resume has to restore.
OVERRIDES = (
    "train.epochs=4",
    "model.dropout=0.3",
    "data.augment.crop_padding=1",
    "data.augment.hflip=true",
    "data.augment.rotation=10",
    "train.ema=true",
    "train.grad_accum_steps=2",
    "data.limit=400",
)


@pytest.mark.parametrize("batch", [None, 2], ids=["at-epoch-end", "mid-epoch"])
def test_interrupted_and_resumed_run_equals_uninterrupted(recipe_factory, new_run, batch):
    recipe = recipe_factory(*OVERRIDES)
    straight = new_run(recipe, "straight")
    task.train(recipe, straight)

    broken = new_run(recipe, "broken")
    n_batches = 400 // 64 + 1
    stop = InterruptAt(epoch=1, batch=n_batches - 1 if batch is None else batch)
    result = task.train(recipe, broken, callbacks=[stop])
    assert result["status"] == "interrupted"
    assert len(_history(broken)) == (2 if batch is None else 1)

    resumed = task.train(broken.recipe(), broken, resume=True)
    assert resumed["status"] == "finished"
    assert _history(broken) == _history(straight)
    a, b = _weights(straight.last_checkpoint), _weights(broken.last_checkpoint)
    for key in (k for k in a if k.startswith(("model.", "ema."))):
        assert torch.equal(a[key], b[key]), key


def test_max_steps_stops_part_way_spans_the_schedule_and_resumes_exactly(recipe_factory, new_run):
    """train.max_steps: 9 optimiser steps over epochs of 4 (7 batches, accumulation 2) is 3 epochs, the last
    one cut after one step; the cosine schedule ends at its floor there; an interrupted run resumes exactly."""
    recipe = recipe_factory(*OVERRIDES, "train.max_steps=9", "schedule.name=cosine")
    straight = new_run(recipe, "straight")
    task.train(recipe, straight)
    rows = _history(straight)
    assert [r["step"] for r in rows] == [4, 8, 9] and rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert "val_accuracy" in rows[-1]

    broken = new_run(recipe, "broken")
    assert task.train(recipe, broken, callbacks=[InterruptAt(epoch=1, batch=3)])["status"] == "interrupted"
    task.train(broken.recipe(), broken, resume=True)
    assert _history(broken) == rows


def test_a_recipe_edited_since_the_checkpoint_is_named_and_the_run_left_as_it_was(recipe_factory, new_run):
    """A smaller batch size after running out of memory, then `resume`: the one-cycle scheduler's ValueError
    ("Tried to step 4201 times"); a changed model: load_state_dict's traceback. Now one line, before the run
    is touched; `track.*` may change (where runs go, how they are logged)."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app
    from nnrecipe.errors import UserError

    recipe = recipe_factory("train.epochs=3", "data.limit=200")
    run = new_run(recipe, "edited")
    assert task.train(recipe, run, callbacks=[InterruptAt(epoch=1, batch=1)])["status"] == "interrupted"
    original = run.recipe_path.read_text()
    run.recipe_path.write_text(original.replace("batch_size: 64", "batch_size: 16"))
    with pytest.raises(UserError, match=r"recipe.yaml changed since the checkpoint: train.batch_size: 64 -> 16\."):
        CliRunner().invoke(app, ["resume", str(run.dir)], catch_exceptions=False)
    assert run.meta()["status"] == "interrupted"
    run.recipe_path.write_text(original.replace("progress: false", "progress: true"))  # track.*: allowed
    assert task.train(run.recipe(), run, resume=True)["status"] == "finished"


def test_data_changed_since_the_checkpoint_is_named_and_the_run_left_as_it_was(tmp_path):
    """Images added to the folder, then `resume`: the epoch order and the schedule had been drawn for the old
    data, and a mid-epoch resume skipped by position, so the run went on silently on other examples."""
    import shutil

    from tests.conftest import make_recipe, write_digit_tree

    from nnrecipe.errors import UserError
    from nnrecipe.runs import create_run

    tree = write_digit_tree(tmp_path / "tree", [0, 1, 2], per_class=30)
    recipe = make_recipe(tmp_path / "runs", "data.source=imagefolder", f"data.path={tree}", "train.epochs=3")
    run = create_run(recipe, "grown")
    assert task.train(recipe, run, callbacks=[InterruptAt(epoch=1, batch=0)])["status"] == "interrupted"
    added = [shutil.copy(f, f.with_name(f"extra-{f.name}")) for f in sorted((tree / "1").iterdir())[:12]]
    with pytest.raises(UserError, match=r"the data changed since the run started \(train: 64 then, 72 now; val: 8 "
                                        r"then, 9 now; test: 18 then, 21 now\).*restore the data as it was"):  # fmt: skip
        task.train(run.recipe(), run, resume=True)
    assert run.meta()["status"] == "interrupted"
    for f in added:
        f.unlink()
    assert task.train(run.recipe(), run, resume=True)["status"] == "finished"
