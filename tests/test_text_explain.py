"""Text and NER explanations: a model whose label is one keyword attributes most to that keyword, an NER
model's entities are explained by their own words, word pieces merge back into the words of the text,
integrated gradients on MiniLM's embeddings are complete, and the checks tell a real explainer from one
that ignores the model."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tests.test_text_classification import NEG, NOUNS, POS, text_recipe
from tests.test_token_classification import ner_recipe
from typer.testing import CliRunner

from nnrecipe.cli import app
from nnrecipe.errors import UserError
from nnrecipe.models.hf import build
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
from nnrecipe.trust.explain import explain_run
from nnrecipe.trust.text_explain import encode, label_score, piece_scores, word_scores

# 12 epochs: at 6 the entity F1 depended on the dropout draws (0.72-0.93 over seeds 0-4); at 12 it is 0.98-1.0
SMALL = ("model.name=bilstm", "model.embedding_dim=32", "model.hidden_size=32", "optim.lr=0.005", "train.epochs=12")
NEUTRAL = ["long", "new", "old", "short", "french", "recent", "late", "early"]
KEYWORDS = set(POS) | set(NEG)


def write_keywords(path, n, seed):
    """pos, neg and none: the label is the one adjective (a POS, NEG or NEUTRAL word), the rest is filler. With
    a class that no keyword marks, a text of padding says nothing and both keywords have work to do (with
    two classes, one of them can be a model's default, whose texts then need no evidence at all)."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(n):
        label = ("pos", "neg", "none")[i % 3]
        adjective = rng.choice({"pos": POS, "neg": NEG, "none": NEUTRAL}[label])
        words = [rng.choice(NOUNS), "is", adjective] + ["and", rng.choice(NOUNS)] * rng.randint(0, 3)
        lines.append(f"the {' '.join(words)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyword")
    recipe = text_recipe(tmp, "model.name=bilstm", "model.embedding_dim=32", "model.hidden_size=32", "optim.lr=0.01",
                         "train.epochs=12", f"data.train={write_keywords(tmp / 'keywords-train.tsv', 300, 0)}",
                         f"data.test={write_keywords(tmp / 'keywords-test.tsv', 90, 1)}")  # fmt: skip
    run = create_run(recipe, "keyword")
    assert get_family("text_classification").train(recipe, run)["accuracy"] > 0.95
    return run


TEXTS = ["the plot is dreadful and cast", "the film is wonderful", "the ending is tedious and script and story",
         "the movie is superb and picture", "the cast is clumsy", "the story is lovely and ending"]  # fmt: skip


@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_the_keyword_that_carries_the_label_gets_the_most_attribution(keyword_run, method, tmp_path):
    texts = [t for t, label in read_rows(keyword_run.recipe().data.test) if label != "none"]
    rows = explain_run(keyword_run, texts, [method], out=tmp_path)["explanations"]
    tops = [max(r["words"], key=lambda w: w["attribution"]) for r in rows]
    hits = sum(top["word"] in KEYWORDS for top in tops)
    # measured: 60 of 60 (ig and occlusion) in one run, 58 to 60 across seeds and CPUs
    assert hits >= 0.9 * len(rows), (method, [(r["text"], top["word"]) for r, top in zip(rows, tops)])
    assert all(r["text"][top["start"] : top["end"]] == top["word"] for r, top in zip(rows, tops))
    first = rows[0]
    html = open(first["html"]).read()
    assert tops[0]["word"] in html and "rgba(0, 160, 0" in html  # the top word coloured as supporting the label
    md = open(first["markdown"]).read()
    assert f"| {tops[0]['word']} | +" in md and f"| word | {method}: {first['target']} |" in md


def read_rows(path):
    lines = open(path).read().splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines]


def test_a_chosen_target_is_explained_and_bad_requests_are_named(keyword_run, tmp_path):
    r = explain_run(keyword_run, ["the film is wonderful"], ["ig"], target="neg", out=tmp_path)["explanations"][0]
    assert (r["target"], r["predicted"]) == ("neg", "pos") and r["probability"] < 0.5
    towards_pos = explain_run(keyword_run, ["the film is wonderful"], ["ig"], out=tmp_path)["explanations"][0]
    keyword = lambda row: next(w["attribution"] for w in row["words"] if w["word"] == "wonderful")  # noqa: E731
    assert keyword(r) < 0 < keyword(towards_pos)  # the word that makes it pos counts against neg
    with pytest.raises(UserError, match="--method: for text, one or more of ig, occlusion, saliency"):
        explain_run(keyword_run, ["x"], ["gradcam"])
    with pytest.raises(UserError, match="--target: 'maybe' is not one of this run's labels"):
        explain_run(keyword_run, ["x"], ["ig"], target="maybe")


def test_checks_pass_for_a_trained_model_and_deleting_keywords_hurts_more_than_random_words(keyword_run):
    checks = explain_run(keyword_run, [], ["ig", "occlusion"], check=True, check_examples=32)["checks"]
    for method, c in checks.items():
        # measured: rank correlation 0.24 (ig) and 0.38 (occlusion); deletion AUC 0.23 vs 0.44 for random words
        assert c["randomisation"]["passed"], (method, c["randomisation"])
        d = c["deletion"]
        assert d["attributed"][0] == d["random"][0] > 0.9
        assert d["area_attributed"] < min(d["area_random"], d["area_least"]) - 0.1, (method, d)
    saved = json.loads((keyword_run.dir / "explain" / "report.json").read_text())
    assert set(saved["checks"]) == {"ig", "occlusion"}
    assert "| ig |" in (keyword_run.dir / "explain" / "report.md").read_text()


def test_word_pieces_merge_back_into_words_and_integrated_gradients_are_complete():
    """On MiniLM (a fresh head: completeness holds for any weights): a word of several pieces is one word, its
    score the sum of its pieces'; and the attributions add up to the logit's change from the all-[PAD] baseline."""
    model, tokenizer = build("minilm", ["neg", "pos"], "full")
    model.eval()
    text = "Unbelievably, the screenplay's ending is great!"
    e = encode(tokenizer, text, 64, "sequence")
    assert [w for w, _, _ in e.words] == ["Unbelievably", ",", "the", "screenplay's", "ending", "is", "great", "!"]
    pieces_of_first = [i for i, w in enumerate(e.word_of) if w == 0]
    assert len(pieces_of_first) > 1  # "unbelievably" is several word pieces
    assert e.word_of[0] is None and e.word_of[-1] is None  # [CLS] and [SEP]
    score = label_score(model, 1)
    pieces = piece_scores(model, e, score, "ig", tokenizer.pad_token_id)
    words = word_scores(e, pieces, "ig")
    assert len(words) == len(e.words)
    assert words[0] == pytest.approx(float(pieces[pieces_of_first].sum()), abs=1e-5)
    with torch.no_grad():
        change = float(score(e.input_ids) - score(e.baseline(tokenizer.pad_token_id)))
    assert sum(words) == pytest.approx(change, abs=0.05 * abs(change) + 1e-3)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner")
    recipe = ner_recipe(tmp, *SMALL)
    run = create_run(recipe, "ner")
    assert get_family("token_classification").train(recipe, run)["f1"] > 0.9
    return run


def test_each_predicted_entity_is_explained_most_by_its_own_words(ner_run, tmp_path):
    text = "Yesterday , Maria Schmidt visited Buenos Aires again ."
    rows = explain_run(ner_run, [text], ["ig", "occlusion"], out=tmp_path)["explanations"]
    assert [(r["method"], r["entity"]["text"], r["target"]) for r in rows] == [
        ("ig", "Maria Schmidt", "PER"), ("occlusion", "Maria Schmidt", "PER"),
        ("ig", "Buenos Aires", "LOC"), ("occlusion", "Buenos Aires", "LOC"),
    ]  # fmt: skip
    for r in rows:
        top = max(r["words"], key=lambda w: w["attribution"])["word"]
        assert top in r["entity"]["text"].split(), (r["method"], r["entity"], r["words"])
    assert text[rows[0]["entity"]["start"] : rows[0]["entity"]["end"]] == "Maria Schmidt"
    nothing = explain_run(ner_run, ["again and again ."], ["ig"], out=tmp_path)
    assert nothing["explanations"] == []
    # The command line said nothing at all for such a text (only the markdown file did).
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    res = CliRunner().invoke(app, ["explain", str(ner_run.dir), "again and again .", text, "--out", str(tmp_path)])
    assert res.exit_code == 0 and "'again and again .': no entity predicted, nothing to explain" in res.output
    assert "Maria Schmidt" in res.output and f"{text[:60]!r}: no entity" not in res.output


def test_ner_checks_pass_and_deleting_an_entitys_attributed_words_loses_it_first(ner_run):
    checks = explain_run(ner_run, [], ["ig", "occlusion"], check=True, check_examples=24)["checks"]
    # Measured: deletion areas 0.06 (ig) and 0.06 (occlusion) against 0.48 least attributed first and 0.28
    # random. Randomisation fails (rank correlation 0.61 and 0.58): a re-initialised BiLSTM's tag logits at a
    # word also depend most on that word and its neighbours, so word rankings by locality survive the reset.
    for method, c in checks.items():
        assert c["randomisation"]["passed"] == (c["randomisation"]["rank_correlation"] < 0.5)
        d = c["deletion"]
        assert d["attributed"][0] == d["random"][0] > 0.9  # the gold entities, tagged right before deletion
        assert d["area_attributed"] < min(d["area_random"], d["area_least"]), (method, d)
    assert "gold entities of validation sentences" in (ner_run.dir / "explain" / "report.md").read_text()


def test_the_cli_explains_texts_and_names_bad_requests(keyword_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["explain", str(keyword_run.dir), "the film is wonderful", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.strip().splitlines()[0])
    assert row["method"] == "ig" and row["predicted"] == "pos"  # integrated gradients: the text default
    bad = runner.invoke(app, ["explain", str(keyword_run.dir), "x", "--method", "gradcam"])
    assert isinstance(bad.exception, UserError) and "for text, one or more of ig" in str(bad.exception)


def test_serve_explains_texts_behind_the_key_and_the_text_limit(keyword_run):
    from fastapi.testclient import TestClient

    from nnrecipe.deploy.serve import ServeConfig, create_app

    cfg = ServeConfig(run_dir=keyword_run.dir, api_keys=["k"], max_text_chars=100)
    with TestClient(create_app(cfg)) as client:
        body = {"inputs": ["the film is wonderful", "the plot is dreadful"], "method": "occlusion"}
        assert client.post("/v1/explain", json=body).status_code == 401
        res = client.post("/v1/explain", json=body, headers={"Authorization": "Bearer k"})
        rows = res.json()["explanations"]
        assert res.status_code == 200 and [(r["input"], r["predicted"]) for r in rows] == [(0, "pos"), (1, "neg")]
        assert [max(r["words"], key=lambda w: w["attribution"])["word"] for r in rows] == ["wonderful", "dreadful"]
        long = client.post("/v1/explain", json={"inputs": ["word " * 30]}, headers={"Authorization": "Bearer k"})
        assert long.status_code == 422 and "the limit is 100" in long.json()["detail"]


def test_a_peft_model_is_explained_and_a_temperature_scales_its_attributions():
    """LoRA-wrapped MiniLM: the embeddings are found through peft; under a calibrated run's temperature every
    logit, so every attribution of it, is divided by T."""
    from nnrecipe.models.calibrated import Tempered

    model, tokenizer = build("minilm", ["neg", "pos"], "lora", {"r": 8, "alpha": 16, "dropout": 0.0})
    model.eval()
    e = encode(tokenizer, "the film is wonderful", 64, "sequence")
    for method in ("ig", "occlusion", "saliency"):
        plain = word_scores(e, piece_scores(model, e, label_score(model, 1), method, 0), method)
        tempered = Tempered(model, 2.0).eval()
        halved = word_scores(e, piece_scores(tempered, e, label_score(tempered, 1), method, 0), method)
        assert len(plain) == 4 and any(abs(v) > 1e-4 for v in plain), (method, plain)
        assert halved == pytest.approx([v / 2 for v in plain], rel=1e-3, abs=1e-6), method
