"""A UTF-8 byte-order mark at the start of a file (Excel's "CSV UTF-8", Windows Notepad) is dropped by every
reader of users' text files: kept, it became part of the first column's name ("no column 'sentence'; columns
are sentence, label"), the first API key, the first word of a CoNLL file or a character of a language model."""

from __future__ import annotations

import pytest

from nnrecipe.data.lm import read_text
from nnrecipe.data.text import read_text_file
from nnrecipe.data.tokens import read_token_file
from nnrecipe.deploy.serve import read_api_keys
from nnrecipe.errors import read_utf8

BOM = "\ufeff"


def write(path, text: str):
    path.write_text(BOM + text, encoding="utf-8")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    return path


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "name, text",
    [
        ("a.csv", "sentence,label\n\ufeffa film,1\nbad,0\n"),  # a mark inside the text is text, and stays
        ("a.tsv", "sentence\tlabel\n\ufeffa film\t1\nbad\t0\n"),
        ("a.jsonl", '{"sentence": "\ufeffa film", "label": 1}\n{"sentence": "bad", "label": 0}\n'),
    ],
)
def test_text_rows_read_past_the_mark_in_memory_and_streamed(tmp_path, name, text, stream):
    rows = read_text_file(write(tmp_path / name, text), "auto", "sentence", "label", stream=stream)
    assert list(rows.texts) == [BOM + "a film", "bad"] and rows.labels == ["1", "0"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "name, text",
    [
        ("a.conll", "-DOCSTART- O\n\nAlice B-PER\nruns O\n\nBob B-PER\n"),
        ("a.jsonl", '{"tokens": ["Alice", "runs"], "tags": ["B-PER", "O"]}\n{"tokens": ["Bob"], "tags": ["B-PER"]}\n'),
    ],
)
def test_token_files_read_past_the_mark(tmp_path, name, text, stream):
    sentences = read_token_file(write(tmp_path / name, text), stream=stream)
    assert [list(w) for w in sentences.words] == [["Alice", "runs"], ["Bob"]]


def test_language_model_text_api_keys_and_line_files_drop_the_mark(tmp_path):
    assert read_text(write(tmp_path / "t.txt", "to be\n")) == "to be\n"
    assert read_text(write(tmp_path / "t.jsonl", '{"text": "to be"}\n')) == "to be"
    keys = ["first-key-0123456789", "second-key-0123456789"]
    assert read_api_keys(write(tmp_path / "keys", "\n".join(keys))) == keys  # the first was refused: "\ufeff..."
    assert read_utf8(write(tmp_path / "inputs.txt", "a film\n")) == "a film\n"  # predict --file, label lists...
