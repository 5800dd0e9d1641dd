"""Text files that are not UTF-8 (a binary file, a Latin-1 export) are one line naming the file, from every
reader of a user's text: classification rows in memory and streamed, NER sentences, language-model text (a
folder's files one by one), fairness groups, `predict --file`, a recipe, an API key file, detection label
lists and annotations, a grid map. Each raised UnicodeDecodeError before. A folder where a file belongs is
named as a folder."""

from __future__ import annotations

import re

import pytest

from nnrecipe.data.boxes import load_detection_splits
from nnrecipe.data.lm import read_text
from nnrecipe.data.text import read_text_file
from nnrecipe.data.tokens import read_token_file
from nnrecipe.deploy.serve import read_api_keys
from nnrecipe.errors import UserError
from nnrecipe.recipe import load_recipe
from nnrecipe.rl.gridworld import read_map
from nnrecipe.tasks.detection_recipe import DetectionData
from nnrecipe.trust.fairness import read_groups
from nnrecipe.tune.space import load_space

LATIN1 = "sentence\tlabel\ncaf\xe9 cr\xe8me\t1\n".encode("latin-1")
CONLL = "Caf\xe9 B-ORG\nopens O\n".encode("latin-1")


@pytest.mark.parametrize(
    "name, read",
    [
        ("rows.tsv", lambda p: read_text_file(p, "auto", "sentence", "label")),
        ("rows.tsv", lambda p: read_text_file(p, "auto", "sentence", "label", stream=True)),
        ("rows.jsonl", lambda p: read_text_file(p, "auto", "sentence", "label")),
        ("words.conll", lambda p: read_token_file(p)),
        ("words.conll", lambda p: read_token_file(p, stream=True)),
        ("text/b.txt", lambda p: read_text(p.parent)),  # a folder: the bad file among good ones is named
        ("groups.csv", read_groups),
        ("recipe.yaml", load_recipe),
        ("keys.txt", read_api_keys),
        ("map.txt", lambda p: read_map(str(p))),
        (
            "coco/ann.json",
            lambda p: load_detection_splits(DetectionData(format="coco", path=p.parent, train="ann.json")),
        ),
        (
            "voc/ImageSets/Main/train.txt",
            lambda p: load_detection_splits(
                DetectionData(format="voc", path=p.parents[2], train="train", classes=["cat"])
            ),
        ),
        (
            "yolo/classes.txt",
            lambda p: load_detection_splits(DetectionData(format="yolo", path=p.parent, train="train")),
        ),
    ],
)
def test_a_file_that_is_not_utf8_is_named_in_one_line(tmp_path, name, read):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "a.txt").write_text("good text\n")
    path.write_bytes(CONLL if path.suffix == ".conll" else LATIN1)
    with pytest.raises(UserError, match=rf"{path.name}: not UTF-8 text \(invalid continuation byte at byte 0xe9\)"):
        read(path)


def test_predict_file_that_is_not_utf8_is_named(tmp_path, trained_digits_run):
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    path = tmp_path / "inputs.txt"
    path.write_bytes(LATIN1)
    with pytest.raises(UserError, match="inputs.txt: not UTF-8 text"):
        CliRunner().invoke(app, ["predict", str(trained_digits_run.dir), "--file", str(path)], catch_exceptions=False)


@pytest.mark.parametrize(
    "read, what",
    [
        (lambda p: read_text_file(p, "auto", "sentence", "label"), "data file"),
        (lambda p: read_token_file(p), "data file"),
        (lambda p: read_text(p), None),  # a folder is the language model's other input: its .txt files
        (load_recipe, "recipe file"),
        (read_api_keys, "--api-key-file: key file"),
        (lambda p: read_map(str(p)), "env.map: map file"),
        (lambda p: load_space(p, []), "--space: space file"),
        (read_groups, "--groups: group file"),
    ],
)
def test_a_folder_where_a_file_belongs_is_named_as_a_folder(tmp_path, read, what):
    """A folder given for a file was reported 'not found', which sent users looking for a file that was there."""
    folder = tmp_path / "data.tsv"
    folder.mkdir()
    if what is None:
        with pytest.raises(UserError, match="no .txt files in"):
            read(folder)
        return
    with pytest.raises(UserError, match=rf"^{re.escape(what)} is a folder, not a file: .*data.tsv$"):
        read(folder)
    with pytest.raises(UserError, match=rf"^{re.escape(what)} not found: .*missing.tsv$"):
        read(tmp_path / "missing.tsv")


def test_a_missing_data_file_is_named_by_its_field(tmp_path):
    """ "data file not found: data/conll2003/valid.txt" left the user to find which field held that path."""
    from nnrecipe.recipe import validate_recipe
    from nnrecipe.tasks.language_modeling import stream_splits
    from nnrecipe.tasks.text_inputs import text_splits, token_splits

    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    text = validate_recipe({"task": "text_classification", "data": {"train": str(train), "val": "valid.tsv"}})
    with pytest.raises(UserError, match="^data.val: file not found: valid.tsv$"):
        text_splits(text.data)
    ner = validate_recipe({"task": "token_classification", "data": {"train": str(train), "test": str(tmp_path)}})
    with pytest.raises(UserError, match="^data.test: file is a folder, not a file: "):
        token_splits(ner.data)
    lm = validate_recipe({"task": "language_modeling", "data": {"train": str(tmp_path), "val": "v.txt"}})
    with pytest.raises(UserError, match="^data.val: not found: v.txt$"):  # train may be a folder of .txt files
        stream_splits(lm)


@pytest.mark.parametrize("stream", [False, True])
def test_a_csv_written_with_spaces_after_its_commas_reads_as_meant(tmp_path, stream):
    """`sentence, label` said "no column 'label'; columns are sentence,  label" (the space unseen), the labels
    were ' 1' and ' 0', and a quoted text after a space was split at its commas."""
    path = tmp_path / "hand.csv"
    path.write_text('sentence, label\ngood film, 1\n"bad, awful film", 0\n')
    rows = read_text_file(path, "auto", "sentence", "label", stream=stream)
    assert list(rows.texts) == ["good film", "bad, awful film"] and rows.labels == ["1", "0"]
    tsv = tmp_path / "spaced.tsv"  # a TSV keeps its fields as they are; the error shows the space
    tsv.write_text("sentence\t label\ngood\t1\n")
    with pytest.raises(UserError, match=r"no column 'label'; columns are sentence, ' label'"):
        read_text_file(tsv, "auto", "sentence", "label", stream=stream)


@pytest.mark.parametrize("stream", [False, True])
def test_a_row_without_a_label_is_named_and_json_numbers_are_one_class(tmp_path, stream):
    """In memory, a short CSV row and a JSON null became the class 'None' and an empty field the class '' (the
    streamed reader refused the first and took the second); a JSON 1.0 beside 1 made two classes."""
    cases = {
        "empty.csv": ("sentence,label\ngood film,1\nbad film,\n", r"row 2.*: the label \('label'\) is empty"),
        "short.csv": ("sentence,label\ngood film,1\nbad film\n", r"row 2.* has no 'label'"),
        "null.jsonl": ('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": null}\n', r"row 2.* has no 'label'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=rf"{name}: {message}"):
            read_text_file(tmp_path / name, "auto", "sentence", "label", stream=stream)
    (tmp_path / "numbers.jsonl").write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 1.0}\n')
    assert read_text_file(tmp_path / "numbers.jsonl", "auto", "sentence", "label", stream=stream).labels == ["1", "1"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path, stream):
    """A list or string line was listed as "columns are h, e, l, l, o" (its characters), or, after a good first
    row, ended in a traceback; for a language model a string row was a TypeError and a null text "None"."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n"oops"\n')
    with pytest.raises(UserError, match=r"rows.jsonl:2: not a JSON object \(str\)"):
        read_text_file(path, "auto", "sentence", "label", stream=stream)
    path.write_text('["a", 1]\n')
    with pytest.raises(UserError, match=r"rows.jsonl:1: not a JSON object \(list\)"):
        read_text_file(path, "auto", "sentence", "label", stream=stream)
    lm = tmp_path / "lm.jsonl"
    lm.write_text('{"text": "to be"}\n"hello text world"\n')
    with pytest.raises(UserError, match=r"lm.jsonl:2: not a JSON object with a 'text' field"):
        read_text(lm)
    lm.write_text('{"text": "to be"}\n{"text": null}\n')
    with pytest.raises(UserError, match=r"lm.jsonl:2: no field 'text'"):
        read_text(lm)
