"""Text classification on the packaged MiniLM: it learns a separable toy set, LoRA trains only adapters."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nnrecipe.data.text import TextLoader, label_names, read_text_file
from nnrecipe.errors import UserError
from nnrecipe.models.hf import build
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

task = get_family("text_classification")

POS = ["wonderful", "charming", "delightful", "brilliant", "moving", "superb", "great", "lovely"]
NEG = ["awful", "boring", "dreadful", "tedious", "terrible", "dull", "poor", "clumsy"]
NOUNS = ["film", "movie", "story", "plot", "cast", "script", "ending", "picture"]


def write_toy(path, n=240, seed=0):
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(n):
        good = i % 2 == 0
        words = [rng.choice(NOUNS), "is", rng.choice(POS if good else NEG)] + ["and", rng.choice(NOUNS)] * rng.randint(
            0, 3
        )
        lines.append(f"the {' '.join(words)}\t{'pos' if good else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def text_recipe(tmp_path, *overrides):
    from nnrecipe.recipe import apply_override

    raw = {
        "task": "text_classification",
        "data": {
            "train": str(write_toy(tmp_path / "train.tsv")),
            "test": str(write_toy(tmp_path / "test.tsv", 80, seed=1)),
        },
        "train": {"epochs": 2, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 1e-4},
        "track": {"runs_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False},
    }
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw)


def test_full_fine_tuning_learns_a_separable_set_and_reports(tmp_path):
    recipe = text_recipe(tmp_path)
    run = create_run(recipe, "toy")
    result = task.train(recipe, run)
    assert result["accuracy"] >= 0.9
    report = json.loads((run.dir / "report.json").read_text())["test"]
    assert set(report["per_class"]) == {"neg", "pos"} and report["examples"] == 80
    preds = task.predict(run, ["the film is wonderful", "the plot is dreadful"])
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert task.evaluate(run, data_path=str(tmp_path / "test.tsv"))["examples"] == 80


def test_lora_trains_only_the_adapters_and_the_head(tmp_path, recwarn, capfd):
    recipe = text_recipe(tmp_path, "model.finetune=lora", "optim.lr=1e-3", "train.epochs=1")
    run = create_run(recipe, "lora")
    model, _ = build("minilm", ["neg", "pos"], "lora", {"r": 8, "alpha": 16, "dropout": 0.1})
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]  # peft's, on every run
    assert "Loading weights" not in capfd.readouterr().err  # transformers' bar, printed by predict too
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    task.train(recipe, run)
    inf = task.inference(run)
    trained, meta = inf.model, inf.spec
    assert meta["trainable_parameters"] < 0.05 * meta["total_parameters"]
    base, _ = build("minilm", ["neg", "pos"], "lora", {"r": 8, "alpha": 16, "dropout": 0.1})
    frozen = dict(base.named_parameters())
    for name, p in trained.named_parameters():
        if "lora_" not in name and "classifier" not in name:
            assert torch.equal(p, frozen[name]), name  # the pretrained weights are untouched


def test_length_grouping_cuts_padding_but_keeps_every_example_once():
    rng = random.Random(0)
    enc = [[1] * rng.randint(2, 60) for _ in range(400)]
    grouped = TextLoader(enc, list(range(400)), 16, 0, shuffle=True, group_by_length=True)
    plain = TextLoader(enc, list(range(400)), 16, 0, shuffle=True)

    def padding(loader):
        return sum(int((b["attention_mask"] == 0).sum()) for b in loader.batches(0))

    assert padding(grouped) < 0.3 * padding(plain)
    seen = sorted(int(i) for b in grouped.batches(0) for i in b["labels"])
    assert seen == list(range(400))


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_text_file(tmp_path / "nope.tsv", "auto", "sentence", "label")
    p = tmp_path / "x.tsv"
    p.write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(UserError, match="no column 'sentence'; columns are text, label"):
        read_text_file(p, "auto", "sentence", "label")
    assert label_names(["10", "2", "1"]) == ["1", "2", "10"]


def test_multi_process_sharding_gives_each_process_equal_disjoint_batches():
    rng = random.Random(1)
    enc = [[1] * rng.randint(2, 40) for _ in range(203)]
    shards = [
        TextLoader(enc, list(range(203)), 16, 0, shuffle=True, group_by_length=True, seed=3, rank=r, world_size=2)
        for r in range(2)
    ]
    seen = [[int(i) for b in s.batches(epoch=1) for i in b["labels"]] for s in shards]
    assert len(shards[0]) == len(shards[1]) == 6 and all(len(list(s.batches(1))) == 6 for s in shards)
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) >= 203 - 2 * 16


def test_a_long_text_is_shortened_in_the_printed_line_not_in_json():
    """`predict RUN --file` with a 200,000-character line echoed all of it before the label."""
    from nnrecipe.tasks.outputs import CLASSIFICATION, ENTITIES

    text = "word " * 40_000
    line = CLASSIFICATION.line({"text": text, "label": "pos", "confidence": 0.9, "top": {"pos": 0.9, "neg": 0.1}})
    assert line.endswith("… (200,000 characters): pos (0.900)   top: pos 0.900  neg 0.100") and len(line) < 160
    assert ENTITIES.line({"text": text, "entities": []}).endswith("(200,000 characters): (no entities)")
    assert CLASSIFICATION.line({"text": "short", "label": "a", "confidence": 1.0, "top": {"a": 1.0}}).startswith(
        "short: a"
    )
