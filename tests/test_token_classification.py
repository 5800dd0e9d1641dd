"""NER on the packaged MiniLM: file readers, IOB1 -> IOB2, word <-> sub-token alignment, learning a toy
set, entity offsets from raw text, and merging peft weights into a plain model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nnrecipe.data.tokens import encode_words, entities, read_token_file, split_words, tag_names, to_iob2
from nnrecipe.errors import UserError
from nnrecipe.models.hf import build, model_path
from nnrecipe.recipe import apply_override, validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.token_classification import WordLoader, predict_tags

task = get_family("token_classification")

PEOPLE = [["Maria", "Schmidt"], ["John"], ["Ahmed", "Khan"], ["Li", "Wei"], ["Olga"], ["Pierre", "Dubois"]]
PLACES = [["Berlin"], ["New", "York"], ["Nairobi"], ["Lima"], ["Osaka"], ["Buenos", "Aires"]]
VERBS = ["visited", "left", "loves", "reached", "toured"]


def toy_sentences(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        words = ["Yesterday", ",", *person, rng.choice(VERBS), *place, "again", "."]
        tags = [
            "O",
            "O",
            "I-PER",
            *["I-PER"] * (len(person) - 1),
            "O",
            "I-LOC",
            *["I-LOC"] * (len(place) - 1),
            "O",
            "O",
        ]
        out.append((words, tags))  # IOB1, as CoNLL-2003 ships it
    return out


def write_conll(path, sentences, docstart=True):
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words, tags in sentences:
        lines += [f"{w} NNP I-NP {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines))
    return path


def ner_recipe(tmp_path, *overrides):
    raw = {
        "task": "token_classification",
        "data": {
            "train": str(write_conll(tmp_path / "train.txt", toy_sentences(160))),
            "test": str(write_conll(tmp_path / "test.txt", toy_sentences(40, seed=1))),
        },
        "train": {"epochs": 3, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 3e-4},
        "track": {"runs_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False},
    }
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw)


def test_iob1_becomes_iob2_and_iob2_is_unchanged():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    ]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert to_iob2(iob2) == iob2
    assert entities(iob2) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]


def test_readers_conll_and_jsonl(tmp_path):
    sents = toy_sentences(5)
    data = read_token_file(write_conll(tmp_path / "a.txt", sents))
    assert len(data.words) == 5 and data.words[0] == sents[0][0]
    assert data.tags[0][2].startswith("B-") and all(not t.startswith("I-") or i > 0 for t in data.tags[0] for i in [1])
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps({"tokens": w, "tags": t}) for w, t in sents))
    assert read_token_file(jl).tags == data.tags
    tab = tmp_path / "wnut.txt"  # two tab-separated columns, IOB2
    tab.write_text("Paris\tB-location\nis\tO\n\nnice\tO\n")
    assert read_token_file(tab).tags == [["B-location", "O"], ["O"]]
    assert tag_names(data.tags) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.mark.parametrize("stream", [False, True])
def test_bioes_and_bilou_files_read_as_iob2(tmp_path, stream):
    """OntoNotes-style BIOES (and BILOU) tags were refused: "tag 'S-PER' is not O, B-TYPE or I-TYPE"."""
    bioes = tmp_path / "bioes.txt"
    bioes.write_text("Alice S-PER\nruns O\nto O\nNew B-LOC\nYork E-LOC\n\nLi S-PER\nWei S-PER\n")
    assert read_token_file(bioes, stream=stream).tags == [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-PER", "B-PER"]]
    bilou = tmp_path / "bilou.txt"
    bilou.write_text("Bob U-PER\nmet O\nAnn B-PER\nMarie I-PER\nLee L-PER\n")
    assert read_token_file(bilou, stream=stream).tags == [["B-PER", "O", "B-PER", "I-PER", "I-PER"]]


@pytest.mark.parametrize(
    "content,message",
    [("Paris LOCATION\n", "is not O, B-TYPE or I-TYPE"), ("Paris\n", "data.tag_column=2"), ("\n\n", "no sentences")],
)
def test_bad_token_files_are_clear_errors(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        read_token_file(bad, tag_column=2 if "tag_column" in message else -1)
    with pytest.raises(UserError, match="not found"):
        read_token_file(tmp_path / "missing.txt")


def test_alignment_round_trips_words_to_subtokens_and_back():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path("minilm"))
    words = [["Thompson", "unbelievably", "visited", "1996-08-22", "Zürich", "."], ["EU", "rejects", "German", "call"]]
    tags = [["B-PER", "O", "O", "O", "B-LOC", "O"], ["B-ORG", "O", "B-MISC", "O"]]
    names = tag_names(tags)
    ids = {t: i for i, t in enumerate(names)}
    enc = encode_words(tok, words, tags, ids, max_length=64)
    for i, sent in enumerate(words):
        assert enc.word_index[i] == list(range(len(sent)))  # every word has exactly one labelled position
        labelled = [p for p, l in enumerate(enc.labels[i]) if l != -100]
        assert [names[enc.labels[i][p]] for p in labelled] == tags[i]
        pieces = tok.convert_ids_to_tokens(enc.input_ids[i])
        bounds = labelled + [len(pieces) - 1]  # the last position is [SEP]
        back = [tok.convert_tokens_to_string(pieces[a:b]).replace(" ", "") for a, b in zip(bounds, bounds[1:])]
        assert back == [tok.backend_tokenizer.normalizer.normalize_str(w) for w in sent]
    assert max(len(tok.tokenize(w)) for w in words[0]) > 1  # the test does cover multi-piece words

    class Oracle(torch.nn.Module):  # "predicts" the gold label at each position: predictions must map back exactly
        def forward(self, input_ids, attention_mask, labels=None):
            return type("Out", (), {"logits": torch.nn.functional.one_hot(self.gold.clamp_min(0), len(names)).float()})

    loader = WordLoader(enc, 8, tok.pad_token_id)
    oracle = Oracle()
    oracle.gold = next(iter(loader.batches()))["labels"]
    assert predict_tags(oracle, loader, names).tags == tags
    cut = encode_words(tok, words, tags, ids, max_length=6)  # words past max_length carry no position: predicted O
    assert cut.word_index[0] == [0, 1] and cut.n_words[0] == 6


def test_ner_learns_a_toy_set_reports_entities_and_predicts_offsets(tmp_path):
    recipe = ner_recipe(tmp_path)
    run = create_run(recipe, "ner")
    result = task.train(recipe, run)
    assert result["f1"] >= 0.9, result["f1"]
    report = json.loads((run.dir / "report.json").read_text())["test"]
    assert set(report["per_type"]) == {"LOC", "PER"} and report["sentences"] == 40 and report["token_accuracy"] > 0.9
    assert "entity F1" in (run.dir / "report.md").read_text()
    text = "Yesterday, Pierre Dubois visited Buenos Aires again."
    found = task.predict(run, [text])[0]["entities"]
    assert [(e["text"], e["type"]) for e in found] == [("Pierre Dubois", "PER"), ("Buenos Aires", "LOC")]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
    assert task.evaluate(run, data_path=str(tmp_path / "test.txt"))["sentences"] == 40


def test_split_words_keeps_offsets():
    text = "Mr. O'Neil flew to São Paulo, Brazil (2019)!"
    assert all(text[a:b] == w for w, a, b in split_words(text))
    assert [w for w, _, _ in split_words(text)][:4] == ["Mr", ".", "O'Neil", "flew"]


@pytest.mark.parametrize("mode", ["lora", "adalora", "prefix", "ia3"])
def test_peft_modes_train_only_their_own_parameters(mode):
    model, _ = build(
        "minilm",
        ["O", "B-PER", "I-PER"],
        mode,
        {"r": 4, "alpha": 8, "dropout": 0.0, "total_steps": 50, "prefix_tokens": 4},
        head="token",
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    marker = {"lora": "lora_", "adalora": "lora_", "prefix": "prompt_encoder", "ia3": "ia3_"}[mode]
    assert trainable and all(marker in n or "classifier" in n for n in trainable), trainable[:5]
    assert any(marker in n for n in trainable)


def test_adalora_trains_through_the_engine_and_prunes_ranks(tmp_path):
    recipe = ner_recipe(
        tmp_path, "model.finetune=adalora", "train.epochs=2", "optim.lr=2e-3", "data.limit=72", "model.lora_r=2"
    )
    run = create_run(recipe, "adalora")
    task.train(recipe, run)
    from safetensors.torch import load_file

    config = json.loads((run.dir / "adapter" / "adapter_config.json").read_text())
    singular = [t for n, t in load_file(run.dir / "adapter" / "adapter_model.safetensors").items() if "lora_E" in n]
    assert config["init_r"] == 3 and len(singular) == 12  # query and value in 6 layers, 3 ranks each at the start
    kept = sum(int((t != 0).sum()) for t in singular)
    assert 0 < kept <= 2 * len(singular)  # pruned (zeroed) down to the target budget of 2 ranks per module


def test_merge_folds_lora_into_a_plain_model_with_equal_logits(tmp_path):
    from transformers import AutoModelForTokenClassification

    from nnrecipe.deploy.merge import PROBE, merge_run

    recipe = ner_recipe(tmp_path, "model.finetune=lora", "train.epochs=1", "optim.lr=2e-3", "data.limit=64")
    run = create_run(recipe, "lora")
    task.train(recipe, run)
    assert (run.dir / "adapter" / "adapter_model.safetensors").is_file()  # adapter weights alone
    out, diff = merge_run(run)
    plain = AutoModelForTokenClassification.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    inf = task.inference(run)
    model, tok = inf.model, inf.tokenizer
    batch = tok(PROBE, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert (plain(**batch).logits - model(**batch).logits).abs().max() <= 1e-5
    assert diff <= 1e-5


def test_prefix_runs_cannot_be_merged_and_say_why():
    from nnrecipe.models.hf import merged

    with pytest.raises(UserError, match="prefix tuning"):
        merged(torch.nn.Linear(1, 1), "prefix")


def test_unreachable_models_are_one_line_errors_at_once(monkeypatch, tmp_path):
    import nnrecipe.models.hf as hf

    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(
        UserError, match="'someone/no-such-model' is not a local model folder and the Hugging Face hub is not reachable"
    ):
        build("someone/no-such-model", ["O"], "full")
    with pytest.raises(UserError, match="no such model folder: .*missing-model"):
        build(str(tmp_path / "missing-model"), ["O"], "full")
