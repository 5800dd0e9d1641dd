"""Zero- and few-shot classification from the packaged MiniLM's sentence embeddings, on the toy sentiment set."""

from __future__ import annotations

import json

import pytest
from tests.test_text_classification import write_toy

from nnrecipe.errors import RecipeError, UserError
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

task = get_family("embedding_classification")


def recipe_for(tmp_path, **model):
    return validate_recipe(
        {
            "task": "embedding_classification",
            "model": model,
            "data": {
                "train": str(write_toy(tmp_path / "train.tsv")),
                "test": str(write_toy(tmp_path / "test.tsv", 80, seed=1)),
                # the toy file repeats its sentences; the prototypes are the first shots of the rows the row
                # split keeps (a containment-grouped split keeps others), so the split is pinned here
                "split_groups": "none",
            },
            "track": {"runs_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False},
        }
    )


def test_few_shot_prototypes_classify_unseen_sentences(tmp_path):
    recipe = recipe_for(tmp_path, mode="fewshot", shots=4)
    run = create_run(recipe, "fewshot")
    result = task.train(recipe, run)
    assert result["accuracy"] >= 0.85 and run.meta()["labels_used_examples"] == 8
    assert json.loads((run.dir / "report.json").read_text())["test"]["examples"] == 80
    preds = task.predict(run, ["the film is wonderful", "the plot is dreadful"])
    assert [p["label"] for p in preds] == ["pos", "neg"] and preds[0]["confidence"] > 0.5
    assert task.evaluate(run, data_path=str(tmp_path / "test.tsv"))["accuracy"] == result["accuracy"]


def test_zero_shot_from_label_descriptions_beats_chance(tmp_path):
    recipe = recipe_for(
        tmp_path,
        mode="zeroshot",
        template="This is {}.",
        label_texts={"pos": "wonderful and good", "neg": "dreadful and bad"},
    )
    result = task.train(recipe, create_run(recipe, "zeroshot"))
    assert result["accuracy"] >= 0.75  # the toy set is balanced: chance is 0.5


def test_bad_embedding_recipes_are_clear_errors(tmp_path):
    with pytest.raises(RecipeError, match="model.mode: must be one of"):
        recipe_for(tmp_path, mode="oneshot")
    recipe = recipe_for(tmp_path, mode="zeroshot", label_texts={"positive": "good"})
    with pytest.raises(UserError, match="positive not among the data's labels"):
        task.train(recipe, create_run(recipe, "bad"))
