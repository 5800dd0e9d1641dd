"""Text models trained from scratch (lstm, bilstm, gru, bigru, textcnn): padding never changes an answer, they
learn through the same families as MiniLM, and their fitted tokenizer travels with the run."""

from __future__ import annotations

import pytest
import torch
from tests.test_text_classification import text_recipe
from tests.test_token_classification import ner_recipe

from nnrecipe.data.word_tokenizer import train_tokenizer
from nnrecipe.deploy import export
from nnrecipe.errors import UserError
from nnrecipe.models.text_encoders import SCRATCH_MODELS, EncoderConfig, ScratchTextModel, reverse_within
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

SMALL = ("model.embedding_dim=32", "model.hidden_size=32", "optim.lr=0.005", "train.epochs=6")


def test_reverse_within_reverses_real_positions_only():
    x = torch.arange(10.0).reshape(2, 5, 1)
    out = reverse_within(x, torch.tensor([3, 5]))[..., 0]
    assert out.tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]


@pytest.mark.parametrize("kind", SCRATCH_MODELS)
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_padding_never_changes_the_logits_of_real_positions(kind, head):
    """A plain bidirectional nn.LSTM would read the padding first in its backward direction and fail this."""
    torch.manual_seed(0)
    cfg = EncoderConfig(kind, vocab_size=50, pad_id=0, n_labels=3, head=head, embedding_dim=8, hidden_size=8, layers=2)
    model = ScratchTextModel(cfg).eval()
    short = torch.randint(2, 50, (1, 4))
    alone = model(input_ids=short).logits
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], 1)
    batch = torch.cat([padded, torch.randint(2, 50, (1, 9))])
    mask = torch.tensor([[1] * 4 + [0] * 5, [1] * 9])
    together = model(input_ids=batch, attention_mask=mask).logits[:1]
    if head == "token":
        together = together[:, :4]
    assert torch.allclose(alone, together, atol=1e-5)


def test_word_tokenizer_keeps_words_seen_twice_and_maps_the_rest_to_unk():
    tok = train_tokenizer(["the film is good", "the film is bad", "unique words here"], "word", 100, lowercase=True)
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1
    ids = tok(["The FILM is zebra"])["input_ids"][0]
    assert ids[:3] == tok(["the film is"])["input_ids"][0] and ids[3] == tok.unk_token_id


def test_scratch_recipes_get_scratch_defaults_unless_they_set_their_own(tmp_path):
    raw = {"task": "text_classification", "model": {"name": "bilstm"}}
    r = validate_recipe(raw)
    assert (r.optim.lr, r.schedule.name, r.train.epochs, r.train.batch_size) == (2e-3, "cosine", 5, 64)
    assert validate_recipe(raw | {"optim": {"lr": 0.01}}).optim.lr == 0.01
    assert validate_recipe({"task": "text_classification"}).optim.lr == 5e-5  # MiniLM's own
    ner = validate_recipe({"task": "token_classification", "model": {"name": "bilstm"}})
    assert ner.train.monitor == "val_f1" and ner.train.epochs == 10


def test_bilstm_learns_text_saves_its_tokenizer_and_exports(tmp_path):
    family = get_family("text_classification")
    recipe = text_recipe(tmp_path, "model.name=bilstm", *SMALL)
    run = create_run(recipe, "bilstm")
    result = family.train(recipe, run)
    assert result["accuracy"] >= 0.9, result["accuracy"]
    assert (run.dir / "tokenizer" / "tokenizer.json").is_file()
    assert run.spec()["architecture"]["kind"] == "bilstm"
    top = family.predict(run, ["the film is wonderful", "the plot is dreadful and boring"])
    assert [p["label"] for p in top] == ["pos", "neg"]
    card = export.export_run(run, "onnx")
    assert card["checks"]["max_abs_diff"] <= export.ATOL
    assert card["preprocessing"]["tokenizer"].startswith("tokenizer/")

    from nnrecipe.deploy.merge import merge_run
    from nnrecipe.deploy.prune import prune_run

    with pytest.raises(UserError, match="not a Hugging Face model"):
        merge_run(run)
    pruned = prune_run(run, 0.2)  # the pruned copy reads the tokenizer it took along
    assert pruned["after"] >= 0.8, pruned
    with pytest.raises(UserError, match="from-scratch baseline"):
        prune_run(run, 0.2, finetune_epochs=1)


def test_textcnn_learns_text(tmp_path):
    recipe = text_recipe(tmp_path, "model.name=textcnn", *SMALL)
    assert get_family("text_classification").train(recipe, create_run(recipe, "cnn"))["accuracy"] >= 0.9


def test_a_peft_mode_on_a_scratch_model_is_refused_naming_the_field(tmp_path):
    recipe = text_recipe(tmp_path, "model.name=gru", "model.finetune=lora")
    with pytest.raises(UserError, match="model.finetune: gru is trained from scratch"):
        get_family("text_classification").train(recipe, create_run(recipe, "gru"))


def test_bilstm_tagger_learns_toy_ner(tmp_path):
    family = get_family("token_classification")
    recipe = ner_recipe(tmp_path, "model.name=bilstm", *SMALL, "train.epochs=10")
    run = create_run(recipe, "ner-bilstm")
    assert family.train(recipe, run)["f1"] >= 0.9
    found = family.predict(run, ["Yesterday, Olga visited Berlin again."])[0]["entities"]
    assert [(e["text"], e["type"]) for e in found] == [("Olga", "PER"), ("Berlin", "LOC")]


@pytest.mark.parametrize("kind", ["bilstm", "gru", "textcnn"])
def test_an_empty_text_is_read_as_one_padding_position_not_a_nan(kind):
    """A text with no tokens (the word tokenizer adds no [CLS]): max-pooling over no position gave the
    dtype's minimum, infinite logits, a NaN loss and a 'diverged' run from one blank row of the training file;
    a batch of empty texts only (no time steps) crashed the RNN. Other rows are not changed by it."""
    torch.manual_seed(0)
    model = ScratchTextModel(EncoderConfig(kind, vocab_size=20, pad_id=0, n_labels=2, hidden_size=8)).eval()
    ids = torch.tensor([[5, 6, 7], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 0]))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    alone = model(input_ids=ids[:1], attention_mask=mask[:1]).logits
    assert torch.allclose(out.logits[:1], alone, atol=1e-6)
    empty = model(input_ids=torch.zeros(2, 0, dtype=torch.long), attention_mask=torch.zeros(2, 0, dtype=torch.long))
    assert torch.allclose(empty.logits, out.logits[1:].expand(2, -1), atol=1e-6)  # the same reading of nothing


def test_a_token_head_gives_no_position_for_no_token():
    """NER's `predict RUN ""`: a batch of empty texts has no time steps; the token head answers with none
    (the one padding position the encoder read was returned, and tagging failed on the shape)."""
    model = ScratchTextModel(EncoderConfig("bilstm", vocab_size=20, pad_id=0, n_labels=3, head="token", hidden_size=8))
    out = model(input_ids=torch.zeros(2, 0, dtype=torch.long), attention_mask=torch.zeros(2, 0, dtype=torch.long))
    assert out.logits.shape == (2, 0, 3)


def test_data_with_one_label_or_no_entity_is_refused_before_training(tmp_path):
    """Every row labelled alike (or every tag O) trained a model that is always right and learned nothing."""
    (tmp_path / "one.tsv").write_text("sentence\tlabel\n" + "".join(f"a good film {i}\tpos\n" for i in range(40)))
    recipe = text_recipe(tmp_path, "model.name=bilstm", f"data.train={tmp_path / 'one.tsv'}", "data.test=null")
    with pytest.raises(UserError, match="data.train: every training example is labelled 'pos'"):
        get_family("text_classification").train(recipe, create_run(recipe, "one"))
    (tmp_path / "o.conll").write_text("".join(f"Bob O\nruns O\n{i} O\n\n" for i in range(40)))
    recipe = ner_recipe(tmp_path, "model.name=bilstm", f"data.train={tmp_path / 'o.conll'}", "data.test=null")
    with pytest.raises(UserError, match="every training example is labelled 'O'.*entity tags besides O"):
        get_family("token_classification").train(recipe, create_run(recipe, "o"))
