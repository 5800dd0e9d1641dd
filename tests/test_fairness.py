"""`nnrecipe evaluate --groups`: per-group scores and the parity differences equal a hand computation, a real
image run is grouped by its file paths, and a bad groups file is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnrecipe.errors import UserError
from nnrecipe.tasks import get_family
from nnrecipe.trust.fairness import evaluate_fairness, group_table


def test_group_metrics_and_differences_equal_a_hand_computation():
    # group a: 4 examples, predicted positive 3 (selection 0.75); TPR 2/2 = 1, FPR 1/2 = 0.5; accuracy 3/4
    # group b: 4 examples, predicted positive 1 (selection 0.25); TPR 1/3, FPR 0/1 = 0;     accuracy 2/4
    y_true = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    y_pred = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    groups = ["a"] * 4 + ["b"] * 4
    by_group, gaps = group_table(y_true, y_pred, groups, positive=1)
    assert by_group["a"]["selection_rate"] == 0.75 and by_group["b"]["selection_rate"] == 0.25
    assert by_group["a"]["accuracy"] == 0.75 and by_group["b"]["accuracy"] == 0.5
    assert by_group["a"]["support"] == by_group["b"]["support"] == 4
    assert gaps["demographic_parity_difference"] == pytest.approx(0.5)
    assert gaps["equalized_odds_difference"] == pytest.approx(max(1 - 1 / 3, 0.5 - 0))


def test_an_image_run_is_grouped_by_its_files_and_bad_files_are_named(tmp_path):
    from tests.conftest import make_recipe, write_digit_tree

    from nnrecipe.runs import create_run

    tree = write_digit_tree(tmp_path / "imgs", [0, 1, 2], per_class=40)
    recipe = make_recipe(tmp_path / "runs", "data.source=imagefolder", f"data.path={tree}", "train.epochs=3")
    run = create_run(recipe, "folder")
    get_family("image_classification").train(recipe, run)
    keys = get_family("image_classification").example_keys(run, "test")
    groups = tmp_path / "groups.csv"  # by file name only: the file's name is enough to find it
    groups.write_text("example,group\n" + "".join(f"{k.split('/')[-1]},{'even' if i % 2 else 'odd'}\n"
                                                  for i, k in enumerate(keys[:-2])))  # fmt: skip
    r = evaluate_fairness(run, "test", groups)
    assert r["grouped"] == len(keys) - 2 and r["ungrouped"] == 2
    assert set(r["by_group"]) == {"even", "odd"} and sum(g["support"] for g in r["by_group"].values()) == r["grouped"]
    assert r["positive"] is None and set(r["differences"]) == {
        "demographic_parity_difference",
        "equalized_odds_difference",
    }
    assert all(0 <= d["value"] <= 1 for d in r["differences"].values())
    assert r["small_groups"] == sorted(r["by_group"])  # a dozen test images per group: flagged
    saved = json.loads((run.dir / "fairness" / "report.json").read_text())
    assert saved["by_group"] == r["by_group"] and (run.dir / "fairness" / "groups.png").is_file()
    assert "too few to judge" in (run.dir / "fairness" / "report.md").read_text()
    assert evaluate_fairness(run, "test", groups, positive="1")["positive"] == "1"
    with pytest.raises(UserError, match="--groups: group file not found"):
        evaluate_fairness(run, "test", tmp_path / "missing.csv")
    (tmp_path / "one.csv").write_text("".join(f"{k},all\n" for k in keys))
    with pytest.raises(UserError, match="in 1 group\\(s\\); fairness compares two or more"):
        evaluate_fairness(run, "test", tmp_path / "one.csv")
    (tmp_path / "bad.csv").write_text("just-one-column\n")
    with pytest.raises(UserError, match="line 1 has 1 field\\(s\\), not `example,group`"):
        evaluate_fairness(run, "test", tmp_path / "bad.csv")
    # An unquoted comma in a text split it into a wrong example and group, silently; a header alone said
    # "line 1 is not one", and a bad line after the header was numbered one too low.
    (tmp_path / "comma.csv").write_text('example,group\n"a, quoted one",g1\na good, funny film,g2\n')
    with pytest.raises(UserError, match="comma.csv: line 3 has 3 field\\(s\\).*in double quotes"):
        evaluate_fairness(run, "test", tmp_path / "comma.csv")
    (tmp_path / "header.csv").write_text("example,group\n")
    with pytest.raises(UserError, match="header.csv: no `example,group` rows"):
        evaluate_fairness(run, "test", tmp_path / "header.csv")
    with pytest.raises(UserError, match="--positive: one of this run's labels"):
        evaluate_fairness(run, "test", groups, positive="cat")
    (tmp_path / "latin1.csv").write_bytes("example,group\nb\xe9b\xe9.png,a\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.csv: not UTF-8 text .* at byte 0xe9"):  # was a UnicodeDecodeError
        evaluate_fairness(run, "test", tmp_path / "latin1.csv")


def test_runs_without_files_or_labels_refuse_in_one_line(trained_digits_run):
    with pytest.raises(UserError, match="come from digits, not files"):
        evaluate_fairness(trained_digits_run, "test", trained_digits_run.dir / "recipe.yaml")
    with pytest.raises(UserError, match="no fairness by group for"):
        get_family("token_classification").require("fairness")


def write_grouped(path, n, seed):
    """The toy sentiment set with a document id (four rows each) and a genre per document."""
    import random

    from tests.test_text_classification import NEG, NOUNS, POS

    rng = random.Random(seed)
    lines = ["sentence\tlabel\tdoc\tgenre"]
    for i in range(n):
        good = i % 2 == 0
        doc = i // 4
        text = f"the {rng.choice(NOUNS)} is {rng.choice(POS if good else NEG)}"
        lines.append(f"{text}\t{'pos' if good else 'neg'}\td{doc}\t{'news' if doc % 3 else 'review'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_group_column_splits_by_document_and_makes_evaluate_report_by_group(tmp_path):
    from tests.test_text_classification import text_recipe
    from typer.testing import CliRunner

    from nnrecipe.cli import app
    from nnrecipe.runs import create_run

    train, test = (
        write_grouped(tmp_path / "grouped-train.tsv", 240, 0),
        write_grouped(tmp_path / "grouped-test.tsv", 120, 1),
    )
    recipe = text_recipe(tmp_path, "model.name=bilstm", "model.embedding_dim=32", "model.hidden_size=32",
                         "optim.lr=0.005", "train.epochs=4", f"data.train={train}", f"data.test={test}",
                         "data.split_groups=doc", "data.group_column=genre")  # fmt: skip
    family = get_family("text_classification")
    splits = family.splits(recipe)
    assert splits.meta["split_groups"]["mode"] == "column doc"
    assert not set(splits.val.columns["doc"]) & set(splits.train.columns["doc"])  # no document on both sides
    run = create_run(recipe, "grouped")
    family.train(recipe, run)
    res = CliRunner().invoke(app, ["evaluate", str(run.dir)])
    assert res.exit_code == 0, res.output
    saved = json.loads((run.dir / "fairness" / "report.json").read_text())
    probs, labels = family.probabilities(run, "test")
    pred, genres = probs.argmax(1).numpy(), np.asarray(splits.test.columns["genre"])
    for genre in ("news", "review"):
        rows = genres == genre
        assert saved["by_group"][genre]["support"] == rows.sum()
        assert saved["by_group"][genre]["accuracy"] == pytest.approx((pred[rows] == labels.numpy()[rows]).mean())
    assert saved["split"] == "test" and "news:" in res.output


def test_bad_group_columns_are_named_and_the_doctor_flags_small_groups(tmp_path):
    from nnrecipe.tasks.text_doctor import data_check
    from nnrecipe.tasks.text_inputs import text_splits
    from nnrecipe.tasks.text_recipes import TextData, TextRecipe

    path = write_grouped(tmp_path / "g.tsv", 120, 0)
    with pytest.raises(UserError, match="no column 'speaker'; columns are sentence, label, doc, genre"):
        text_splits(TextData(train=path, group_column="speaker"))
    one = tmp_path / "one.tsv"
    one.write_text(path.read_text().replace("\treview\n", "\tnews\n"))
    with pytest.raises(UserError, match="data.split_groups: column 'genre' holds one value"):
        text_splits(TextData(train=one, split_groups="genre"))
    recipe = TextRecipe.model_validate(
        {"task": "text_classification", "data": {"train": str(path), "group_column": "genre"}}
    )
    splits = text_splits(recipe.data)

    def tokenizer(batch):
        return {"input_ids": [t.split() for t in batch]}

    check = data_check(recipe, splits.train, splits.val, None, tokenizer)
    # 12 validation rows: both genres under 30
    assert check.verdict == "warn" and "fewer than 30 val examples" in check.advice, check
    assert "2 groups in 'genre'" in check.figure
