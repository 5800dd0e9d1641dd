"""Streamed NER files (`data.stream` for token classification): the words stay in the file, each sentence
read when its batch is drawn; the batches, the run and a mid-epoch resume equal the in-memory path's."""

from __future__ import annotations

import json

import pytest
import torch
from tests.test_resume import InterruptAt
from tests.test_token_classification import ner_recipe, toy_sentences, write_conll

from nnrecipe.data.tokens import SentenceFile, read_token_file, tag_names
from nnrecipe.errors import UserError
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.text_inputs import StreamedWordLoader, WordLoader, read_tokens, word_loader
from nnrecipe.tasks.text_models import new_model
from nnrecipe.tasks.text_recipes import TextModel, TokenData

task = get_family("token_classification")


def test_a_streamed_file_reads_the_sentences_the_in_memory_reader_does(tmp_path):
    sentences = toy_sentences(50)
    conll = write_conll(tmp_path / "train.txt", sentences)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(conll.read_bytes().replace(b"\n", b"\r\n"))
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n\n" for w, t in sentences))
    for path in (conll, crlf, jsonl):
        held, streamed = read_token_file(path), read_token_file(path, stream=True)
        assert streamed.streamed and not held.streamed
        assert list(streamed.words) == held.words and streamed.tags == held.tags  # IOB2, as in memory
        pick = [7, 3, 41]
        assert streamed.subset(pick).words.read([0, 1, 2]) == [held.words[i] for i in pick]
        assert streamed.words[5] == held.words[5]
    with pytest.raises(UserError, match="replay memory; set data.stream: false"):
        streamed.concat(held)
    big = write_conll(tmp_path / "big.txt", toy_sentences(400))  # about 2 MB held in memory, by the estimate
    assert read_tokens(TokenData(memory_cap_mb=1), big).streamed and not read_tokens(TokenData(), big).streamed
    bad = tmp_path / "bad.txt"
    bad.write_text("EU B-ORG\nrejects X-MISC\n")
    with pytest.raises(UserError, match=r"bad.txt:2: tag 'X-MISC' is not O, B-TYPE or I-TYPE"):
        read_token_file(bad, stream=True)


@pytest.fixture(scope="module")
def tokenizer():
    return new_model(TextModel(), ["O", "B-X", "I-X"], "token", [])[1]


def test_streamed_batches_equal_the_in_memory_ones_and_a_late_start_reads_none_before_it(
    tmp_path, tokenizer, monkeypatch
):
    path = write_conll(tmp_path / "train.txt", toy_sentences(120))
    held, streamed = read_token_file(path), read_token_file(path, stream=True)
    tags = tag_names(held.tags)
    options = {"shuffle": True, "seed": 3, "group_by_length": True}
    a = word_loader(tokenizer, held, tags, 16, 12, "cpu", **options)  # 12: some sentences are cut
    b = word_loader(tokenizer, streamed, tags, 16, 12, "cpu", **options)
    assert isinstance(a, WordLoader) and isinstance(b, StreamedWordLoader) and len(a) == len(b)
    for epoch in (0, 1):
        for x, y in zip(a.batches(epoch), b.batches(epoch), strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    tail = list(b.batches(1))[5:]
    read: list[int] = []
    words = SentenceFile.words
    monkeypatch.setattr(SentenceFile, "words", lambda self, idx: read.extend(idx) or words(self, idx))
    resumed = list(b.batches(1, start=5))
    assert len(read) == sum(len(x["labels"]) for x in resumed)  # only the batches from the 6th on were read
    assert all(torch.equal(x[k], y[k]) for x, y in zip(tail, resumed, strict=True) for k in x)
    evaluation = [word_loader(tokenizer, p, tags, 16, 12, "cpu") for p in (held, streamed)]
    (_, i1, n1), (_, i2, n2) = (next(loader.tagged_batches()) for loader in evaluation)
    assert i1 == i2 and n1 == n2  # the word of each labelled position, as predict_tags reads them back


def _history(run):
    return [(r["train_loss"], r["val_loss"], r["val_f1"]) for r in map(json.loads, open(run.dir / "metrics.jsonl"))]


def test_a_streamed_ner_run_equals_the_in_memory_one_and_resumes_exactly(tmp_path):
    held = ner_recipe(tmp_path, "train.epochs=2", "data.stream=false")
    streamed = ner_recipe(tmp_path, "train.epochs=2", "data.stream=true")
    assert read_tokens(streamed.data, streamed.data.train).streamed
    a, b = create_run(held, "held"), create_run(streamed, "streamed")
    task.train(held, a)
    task.train(streamed, b)
    assert _history(a) == _history(b)
    assert a.report()["test"] == b.report()["test"]
    c = create_run(streamed, "resumed")
    assert task.train(streamed, c, callbacks=[InterruptAt(1, 2)])["status"] == "interrupted"
    task.train(c.recipe(), c, resume=True)
    assert _history(c) == _history(b)
