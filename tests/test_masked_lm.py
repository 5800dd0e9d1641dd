"""Domain-adaptive pretraining (objective: mlm): masking is seeded per batch, whole words mask together,
the packaged MiniLM trains on raw text, and its model folder starts a text classifier."""

from __future__ import annotations

import pytest
import torch
from tests.test_language_modeling import corpus, lm_recipe
from tests.test_text_classification import text_recipe

from nnrecipe.data.lm import BlockLoader
from nnrecipe.errors import UserError
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.lm_recipe import Masking
from nnrecipe.tasks.masked_lm import MaskedBlocks, MaskedOnly, load_encoder, stream

family = get_family("language_modeling")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_encoder("minilm")[1]


def masked(tokenizer, masking=Masking(), seed=0):
    tokens = stream(tokenizer, corpus(200), "text")
    return MaskedBlocks(BlockLoader(tokens, 30, 8, batches=4, shuffle=True, seed=seed), tokenizer, masking, seed)


def test_masking_is_drawn_from_seed_epoch_and_batch_and_spares_cls_and_sep(minilm_tokenizer):
    a, b = masked(minilm_tokenizer), masked(minilm_tokenizer)
    first, again = list(a.batches(0)), list(b.batches(0))
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(first, again))
    resumed = list(b.batches(0, start=2))  # a resumed epoch masks its remaining batches the same way
    assert torch.equal(resumed[0]["labels"], first[2]["labels"])
    assert not torch.equal(list(a.batches(1))[0]["labels"], first[0]["labels"])
    labels = torch.cat([x["labels"] for x in first])
    assert (labels[:, [0, -1]] == -100).all()  # [CLS] and [SEP] are never chosen
    share = (labels != -100).float().mean().item()
    assert 0.10 < share < 0.20
    inputs = torch.cat([x["input_ids"] for x in first])
    chosen = labels != -100
    to_mask = (inputs[chosen] == minilm_tokenizer.mask_token_id).float().mean().item()
    assert 0.7 < to_mask < 0.9  # 80% of the chosen tokens become [MASK]


def test_whole_word_masking_masks_every_piece_of_a_word(minilm_tokenizer, recwarn):
    tok = minilm_tokenizer
    text = "unbelievably tokenization " * 400
    loader = MaskedBlocks(
        BlockLoader(stream(tok, text, "text"), 30, 8, batches=2, shuffle=True), tok, Masking(whole_word=True), 0
    )
    pieces = tok.convert_ids_to_tokens(tok("unbelievably tokenization", add_special_tokens=False)["input_ids"])
    assert any(p.startswith("##") for p in pieces)
    for batch in loader.batches():
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            words = tok.convert_ids_to_tokens(torch.where(labels != -100, labels, ids).tolist())
            chosen = (labels != -100).tolist()
            for i in range(2, len(words) - 1):  # a continuation piece is chosen exactly when its word start is
                if words[i].startswith("##"):
                    assert chosen[i] == chosen[i - 1], (words[i - 1 : i + 1], chosen[i - 1 : i + 1])
            assert all(ids[labels != -100] == tok.mask_token_id)  # every chosen piece becomes [MASK]
    assert not [w for w in recwarn if "whole word masking" in str(w.message)]  # transformers', every run


def test_minilm_pretrains_on_raw_text_and_its_folder_starts_a_classifier(tmp_path):
    recipe = lm_recipe(
        tmp_path,
        "objective=mlm",
        "model.name=minilm",
        "data.block_size=32",
        "data.batches_per_epoch=6",
        "data.eval_batches=2",
        "train.epochs=2",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "optim.lr=1e-4",
        "optim.weight_decay=0.01",
    )
    run = create_run(recipe, "mlm")
    result = family.train(recipe, run)
    history = result["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # the same masked blocks each epoch
    assert 0 <= result["masked_accuracy"] <= 1  # its masked-LM head starts fresh: all-MiniLM-L6-v2 ships none
    folder = run.dir / "model"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert "Model folder" in (run.dir / "report.md").read_text()
    with pytest.raises(UserError, match="masked-LM pretraining; start a text or NER recipe"):
        family.generate(run, "the")

    text = get_family("text_classification")
    (tmp_path / "cls").mkdir()
    classifier = text_recipe(tmp_path / "cls", f"model.name={folder}", "train.epochs=1")
    assert text.train(classifier, create_run(classifier, "from-mlm"))["accuracy"] > 0.5


def test_mlm_refuses_a_model_from_scratch(tmp_path):
    recipe = lm_recipe(tmp_path, "objective=mlm")
    with pytest.raises(UserError, match="objective mlm continues a pretrained encoder"):
        family.train(recipe, create_run(recipe, "x"))


def test_the_masked_only_head_gives_the_full_models_logits_at_the_masked_tokens(minilm_tokenizer):
    model = load_encoder("minilm")[0].eval()
    batch = next(iter(masked(minilm_tokenizer).batches()))
    wrapped = MaskedOnly(model)
    assert wrapped.head is model.cls
    with torch.no_grad():
        logits, labels = wrapped(**batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    assert torch.allclose(logits, full[keep], atol=1e-4) and torch.equal(labels, batch["labels"][keep])
