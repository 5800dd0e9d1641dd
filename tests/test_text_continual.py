"""Continual learning for text and NER: a continued run keeps the earlier labels' head rows (and logits) and
its tokenizer, replay forgets less than fine-tuning on class-incremental text stages (measured), and an NER
run learns a new entity type beside the old ones; bad continuations are named."""

from __future__ import annotations

import random

import pytest
import torch
from tests.test_text_classification import NEG, NOUNS, POS, text_recipe
from tests.test_token_classification import ner_recipe, toy_sentences, write_conll

from nnrecipe.continual import train_stages
from nnrecipe.engine.checkpoint import load_checkpoint
from nnrecipe.engine.loop import make_accelerator
from nnrecipe.errors import UserError
from nnrecipe.runs import create_run, open_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.text_classification import predict_probs
from nnrecipe.tasks.text_inputs import text_loader

text = get_family("text_classification")
SMALL = ("model.name=bilstm", "model.embedding_dim=32", "model.hidden_size=32", "optim.lr=0.01")
WORDS = {"pos": POS, "neg": NEG, "sport": ["football", "tennis", "rugby", "cricket", "hockey", "golf"],
         "food": ["pasta", "curry", "salad", "soup", "bread", "cheese"]}  # fmt: skip


def write_topics(path, n, seed):
    """Four labels, each marked by the word after "is": the first two are one stage, the last two the next.
    Every text also names a word of any label later on, so the first stage's vocabulary (a from-scratch
    model's tokenizer is fitted there and kept) holds the second stage's words."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    anything = [w for words in WORDS.values() for w in words]
    for i in range(n):
        label = list(WORDS)[i % 4]
        filler = ["and", rng.choice(NOUNS)] * rng.randint(0, 2)
        lines.append(f"the {rng.choice(NOUNS)} is {rng.choice(WORDS[label])} {' '.join(filler)} "
                     f"unlike {rng.choice(anything)}\t{label}")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("topics")
    return tmp, write_topics(tmp / "topics-train.tsv", 480, 0), write_topics(tmp / "topics-test.tsv", 160, 1)


def staged(topics, strategy, name, *extra):
    tmp, train, test = topics
    recipe = text_recipe(tmp, *SMALL, "train.epochs=6", f"data.train={train}", f"data.test={test}",
                         f"continual.strategy={strategy}", f"track.name={name}", *extra,
                         'continual.stages=[["pos","neg"],["sport","food"]]')  # fmt: skip
    return train_stages(text, recipe, text.continual_stages(recipe), name)


def test_a_continued_text_run_keeps_the_old_labels_logits_and_tokenizer(topics):
    tmp, train, test = topics
    old = text_recipe(tmp, *SMALL, "train.epochs=2", f"data.train={train}", 'data.classes=["pos","neg"]')
    old_run = create_run(old, "old")
    text.train(old, old_run)
    new = text_recipe(tmp, *SMALL, "train.epochs=2", f"data.train={train}", 'data.classes=["sport","food"]')
    text.continue_from(new, old_run.dir)
    splits = text.splits(new)
    assert set(splits.train.labels) == {"sport", "food"}
    setup = text.setup(new, splits, make_accelerator(new.train), create_run(new, "new"))
    assert setup.spec["labels"] == ["neg", "pos", "food", "sport"]  # the old run's first, in its order
    assert setup.spec["vocab_size"] == old_run.spec()["vocab_size"]  # the old tokenizer, not one fitted anew
    inf = text.trained(old_run)
    part = text.splits(text_recipe(tmp, *SMALL, f"data.train={train}", 'data.classes=["pos","neg"]')).val
    loader = text_loader(inf.tokenizer, part, inf.labels, 64, 128, "cpu")
    before, _ = predict_probs(inf.model, loader)
    model = setup.model.eval()
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in loader.batches()])
    old_logits = torch.cat(
        [inf.model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in loader.batches()]
    ).detach()
    assert torch.allclose(logits[:, :2], old_logits, atol=1e-5) and before.shape == (len(part), 2)


def test_text_replay_forgets_less_than_fine_tuning(topics):
    naive = staged(topics, "finetune", "naive")
    replay = staged(topics, "replay", "replay", "continual.memory=60")
    # Measured: fine-tuning on sport/food alone forgets pos/neg (0.96 -> 0.00); 60 remembered texts keep 0.73.
    assert naive["accuracy_matrix"][0][0] > 0.9 and naive["accuracy_matrix"][1][0] < 0.2
    assert replay["average_forgetting"] < naive["average_forgetting"] - 0.5
    _, state = load_checkpoint(f"{replay['runs'][0]}/memory.safetensors")
    assert len(state["rows"]) == 60 and sorted({r["label"] for r in state["rows"]}) == ["neg", "pos"]
    assert open_run(replay["runs"][1]).meta()["continues"] == replay["runs"][0]


def test_ewc_and_lwf_train_text_stages(topics):
    """The strategies run on text (what each holds is measured on digits, tests/test_continual.py): EWC
    keeps the Fisher information for the next stage; LwF trains against the earlier model."""
    ewc = staged(topics, "ewc", "ewc", "continual.ewc_lambda=100")
    fisher, _ = load_checkpoint(f"{ewc['runs'][1]}/fisher.safetensors")
    assert fisher and any(bool((t > 0).any()) for t in fisher.values())
    lwf = staged(topics, "lwf", "lwf")
    assert lwf["accuracy_matrix"][1][1] > 0.9  # the new stage is learnt under the distillation term


def test_an_ner_run_learns_a_new_entity_type_beside_the_old_ones(tmp_path):
    ner = get_family("token_classification")
    old = ner_recipe(tmp_path, "model.name=bilstm", *SMALL, "train.epochs=10")
    old_run = create_run(old, "old")
    ner.train(old, old_run)
    orgs = [["Acme"], ["Globex"], ["Initech"], ["Umbrella"]]
    rng = random.Random(0)
    new_rows = []
    for words, tags in toy_sentences(160, seed=2):
        org = rng.choice(orgs)
        new_rows.append((["Today", *org, "hired", *words[2:]], ["O", *["I-ORG"] * len(org), "O", *tags[2:]]))
    train = write_conll(tmp_path / "orgs.txt", new_rows)
    new = ner_recipe(tmp_path, "model.name=bilstm", *SMALL, "train.epochs=10", f"data.train={train}",
                     "continual.strategy=replay", "continual.memory=40")  # fmt: skip
    ner.continue_from(new, old_run.dir)
    run = create_run(new, "new")
    ner.train(new, run)
    tags = run.spec()["labels"]
    assert tags[: len(old_run.spec()["labels"])] == old_run.spec()["labels"] and "B-ORG" in tags
    found = ner.predict(run, ["Today Globex hired Olga visited Berlin again ."])[0]["entities"]
    assert {(e["text"], e["type"]) for e in found} >= {("Globex", "ORG"), ("Berlin", "LOC")}


def test_a_new_stage_in_words_the_old_vocabulary_lacks_is_reported(topics, capsys):
    tmp, _, _ = topics
    first = tmp / "few-words.tsv"
    first.write_text(
        "sentence\tlabel\n" + "".join(f"film {i} is great\tpos\nfilm {i} is poor\tneg\n" for i in range(20))
    )
    old = text_recipe(tmp, *SMALL, "train.epochs=1", f"data.train={first}")
    old_run = create_run(old, "few-words")
    text.train(old, old_run)
    new = text_recipe(tmp, *SMALL, "train.epochs=1", f"data.train={topics[1]}")
    text.continue_from(new, old_run.dir)
    capsys.readouterr()
    text.setup(new, text.splits(new), make_accelerator(new.train), create_run(new, "more-words"))
    assert "of the new training tokens are not in the earlier run's vocabulary" in capsys.readouterr().err


def test_bad_text_continuations_are_named(topics, trained_digits_run):
    tmp, train, _ = topics
    recipe = text_recipe(tmp, *SMALL, f"data.train={train}")
    text.continue_from(recipe, trained_digits_run.dir)
    with pytest.raises(UserError, match="is a run of image_classification; this recipe is text_classification"):
        text.splits(recipe) and text.setup(recipe, text.splits(recipe), make_accelerator(recipe.train), None)
    with pytest.raises(UserError, match="data.classes: no training rows labelled cinema"):
        text.splits(text_recipe(tmp, *SMALL, f"data.train={train}", 'data.classes=["cinema"]'))
